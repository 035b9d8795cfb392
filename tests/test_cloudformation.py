"""The CloudFormation templates in deployments/cloudformation/: cfn-lint clean, and the settings
Moesif's Firehose integration and least privilege depend on are really there.

cfn-lint runs through its Python API with informational checks included: any match (error,
warning or informational) fails, unless a template's Metadata says why it is ignored.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, Match, lint_file
from cfnlint.decode.cfn_yaml import load as load_cfn

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "deployments" / "cloudformation"
FIREHOSE = TEMPLATES / "firehose-to-moesif.yaml"
POLICY = TEMPLATES / "pipeline-policy.yaml"
MOESIF_ACTIONS_URL = "https://api.moesif.net/v1/partners/aws/kinesis/actions"
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]


@cache
def template(path: Path) -> dict[str, Any]:
    loaded = load_cfn(str(path))
    assert isinstance(loaded, dict)
    return loaded


def lint(path: Path) -> list[Match]:
    """cfn-lint's matches for `path`, informational checks included."""
    return lint_file(path, ManualArgs(include_checks=["I"], regions=REGIONS))


def resources_of_type(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in doc["Resources"].items() if r["Type"] == kind}


def only(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    found = resources_of_type(doc, kind)
    assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
    return next(iter(found.values()))


def ref_default(doc: dict[str, Any], value: Any) -> Any:
    """A literal, or the Default of the parameter a {"Ref": ...} names."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return doc["Parameters"][value["Ref"]].get("Default")
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def when_true(item: Any) -> Any:
    """A statement as it is when its `!If` condition holds (None for AWS::NoValue)."""
    if isinstance(item, dict) and set(item) == {"Fn::If"}:
        _condition, yes, _no = item["Fn::If"]
        return None if yes == {"Ref": "AWS::NoValue"} else yes
    return item


def statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IAM statement in a template (inline role policies and managed policies), the
    conditional ones (`!If`) as they are when their condition holds."""
    found: list[dict[str, Any]] = []
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            found += props["PolicyDocument"]["Statement"]
        for policy in props.get("Policies", []) if resource["Type"] == "AWS::IAM::Role" else []:
            found += policy["PolicyDocument"]["Statement"]
    return [s for s in map(when_true, found) if s is not None]


def resource_text(resource: Any) -> str:
    """An IAM resource as text: a literal ARN or the string of its !Sub."""
    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return str(sub if isinstance(sub, str) else sub[0])
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return "GetAtt:" + ".".join(as_list(resource["Fn::GetAtt"]))
    raise AssertionError(f"unexpected IAM resource form {resource!r}")


# ---------------------------------------------------------------------------------------------
# cfn-lint


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.yaml")), ids=lambda p: p.name)
def test_cfn_lint_is_clean(path: Path) -> None:
    matches = lint(path)
    assert not matches, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches)


def test_cfn_lint_reports_a_broken_copy(tmp_path: Path) -> None:
    """The lint test can fail: the same template with two invalid values is refused."""
    broken = FIREHOSE.read_text(encoding="utf-8")
    broken = broken.replace("SizeInMBs: 1\n", "SizeInMBs: 0\n", 1)
    broken = broken.replace("S3BackupMode: FailedDataOnly", "S3BackupMode: Everything")
    path = tmp_path / "broken.yaml"
    path.write_text(broken, encoding="utf-8")
    ids = {m.rule.id for m in lint(path)}
    assert {"E3034", "E3030"} <= ids, ids


def test_the_two_templates_are_the_whole_set() -> None:
    assert sorted(p.name for p in TEMPLATES.glob("*.yaml")) == [FIREHOSE.name, POLICY.name]


# ---------------------------------------------------------------------------------------------
# firehose-to-moesif.yaml


def test_stream_delivers_direct_put_to_moesif_actions_with_the_app_id_as_access_key() -> None:
    doc = template(FIREHOSE)
    stream = only(doc, "AWS::KinesisFirehose::DeliveryStream")["Properties"]
    assert stream["DeliveryStreamType"] == "DirectPut"
    http = stream["HttpEndpointDestinationConfiguration"]
    endpoint = http["EndpointConfiguration"]
    assert ref_default(doc, endpoint["Url"]) == MOESIF_ACTIONS_URL
    access_key = endpoint["AccessKey"]
    assert set(access_key) == {"Ref"}, "the access key must come from a parameter"
    app_id = doc["Parameters"][access_key["Ref"]]
    assert app_id["NoEcho"] is True
    assert "Default" not in app_id, "no default application id may live in the template"


def test_stream_gzip_buffering_retry_and_failed_data_backup() -> None:
    doc = template(FIREHOSE)
    http = only(doc, "AWS::KinesisFirehose::DeliveryStream")["Properties"][
        "HttpEndpointDestinationConfiguration"
    ]
    assert http["RequestConfiguration"]["ContentEncoding"] == "GZIP"
    assert http["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 60}
    retry = http["RetryOptions"]["DurationInSeconds"]
    assert set(retry) == {"Ref"}
    retry_param = doc["Parameters"][retry["Ref"]]
    assert retry_param["Default"] == 3600
    assert 0 <= retry_param["MinValue"] <= retry_param["MaxValue"] <= 7200
    assert http["S3BackupMode"] == "FailedDataOnly"
    bucket_name = next(iter(resources_of_type(doc, "AWS::S3::Bucket")))
    assert http["S3Configuration"]["BucketARN"] == {"Fn::GetAtt": [bucket_name, "Arn"]}
    assert http["RoleARN"] == http["S3Configuration"]["RoleARN"]
    assert http["CloudWatchLoggingOptions"]["Enabled"] is True
    assert http["S3Configuration"]["CloudWatchLoggingOptions"]["Enabled"] is True


def test_failed_records_bucket_is_encrypted_private_and_expires_failed_records() -> None:
    doc = template(FIREHOSE)
    bucket = only(doc, "AWS::S3::Bucket")
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    days = rule["ExpirationInDays"]
    assert set(days) == {"Ref"} and doc["Parameters"][days["Ref"]]["MinValue"] >= 1
    http = only(doc, "AWS::KinesisFirehose::DeliveryStream")["Properties"][
        "HttpEndpointDestinationConfiguration"
    ]
    assert rule["Prefix"] == http["S3Configuration"]["Prefix"], "the rule must cover the backups"
    assert bucket["DeletionPolicy"] == "Retain"


def test_log_group_has_retention_and_streams_for_delivery_and_backup() -> None:
    doc = template(FIREHOSE)
    group = only(doc, "AWS::Logs::LogGroup")["Properties"]
    assert "RetentionInDays" in group
    assert len(resources_of_type(doc, "AWS::Logs::LogStream")) == 2


def test_firehose_role_is_assumed_by_firehose_only_and_scoped() -> None:
    doc = template(FIREHOSE)
    role = only(doc, "AWS::IAM::Role")["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "firehose.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["sts:ExternalId"] == {"Ref": "AWS::AccountId"}
    for statement in statements(doc):
        for resource in as_list(statement["Resource"]):
            text = resource_text(resource)
            assert text != "*" and not text.endswith(":*"), statement
        actions = set(as_list(statement["Action"]))
        if actions & {"s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"}:
            (resource,) = as_list(statement["Resource"])
            assert resource_text(resource) == "${FailedRecordsBucket.Arn}/${FailedRecordsPrefix}*"
        if "s3:ListBucket" in actions:
            assert "s3:prefix" in statement["Condition"]["StringLike"]
        if any(a.startswith("logs:") for a in actions):
            assert actions == {"logs:PutLogEvents"}
            for resource in as_list(statement["Resource"]):
                assert ":log-stream:${" in resource_text(resource)


def test_firehose_outputs() -> None:
    outputs = template(FIREHOSE)["Outputs"]
    assert outputs["DeliveryStreamName"]["Value"] == {"Ref": "DeliveryStream"}
    assert outputs["DeliveryStreamArn"]["Value"] == {"Fn::GetAtt": ["DeliveryStream", "Arn"]}
    assert outputs["FailedRecordsBucketName"]["Value"] == {"Ref": "FailedRecordsBucket"}


def test_failed_deliveries_output_is_the_streams_error_output_prefix() -> None:
    """`redrive` reads the FailedDeliveriesLocation output: exactly where the stream writes
    what Moesif did not accept (its ErrorOutputPrefix in the backup bucket)."""
    doc = template(FIREHOSE)
    stream = only(doc, "AWS::KinesisFirehose::DeliveryStream")["Properties"]
    backup = stream["HttpEndpointDestinationConfiguration"]["S3Configuration"]
    assert backup["BucketARN"] == {"Fn::GetAtt": ["FailedRecordsBucket", "Arn"]}
    error_prefix = backup["ErrorOutputPrefix"]["Fn::Sub"]
    location = doc["Outputs"]["FailedDeliveriesLocation"]["Value"]["Fn::Sub"]
    assert location == "s3://${FailedRecordsBucket}/" + error_prefix


# ---------------------------------------------------------------------------------------------
# pipeline-policy.yaml


def test_pipeline_policy_grants_exactly_send_read_source_and_checkpoint() -> None:
    doc = template(POLICY)
    by_sid = {s["Sid"]: s for s in statements(doc)}
    assert all(s["Effect"] == "Allow" for s in by_sid.values())
    granted = {
        (action, resource_text(resource))
        for s in by_sid.values()
        for action in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    }
    stream = "arn:${AWS::Partition}:firehose:${AWS::Region}:${AWS::AccountId}"
    stream += ":deliverystream/${DeliveryStreamName}"
    source_objects = "arn:${AWS::Partition}:s3:::${SourceBucket}/${SourcePrefix}*"
    checkpoint_objects = "arn:${AWS::Partition}:s3:::${CheckpointBucket}/${CheckpointPrefix}*"
    failed_objects = (
        "arn:${AWS::Partition}:s3:::${FailedDeliveriesBucket}/${FailedDeliveriesPrefix}*"
    )
    assert granted == {
        ("firehose:PutRecordBatch", stream),
        ("firehose:DescribeDeliveryStream", stream),
        ("s3:ListBucket", "arn:${AWS::Partition}:s3:::${SourceBucket}"),
        ("s3:GetObject", source_objects),
        ("s3:ListBucket", "arn:${AWS::Partition}:s3:::${CheckpointBucket}"),
        ("s3:GetObject", checkpoint_objects),
        ("s3:PutObject", checkpoint_objects),
        ("s3:DeleteObject", checkpoint_objects),
        ("s3:ListBucket", "arn:${AWS::Partition}:s3:::${FailedDeliveriesBucket}"),
        ("s3:GetObject", failed_objects),
        ("s3:DeleteObject", failed_objects),
    }
    assert by_sid["ListSource"]["Condition"] == {
        "StringLike": {"s3:prefix": {"Fn::Sub": "${SourcePrefix}*"}}
    }
    # not narrowed on purpose: GetObject of a missing checkpoint must get 404, not 403
    assert "Condition" not in by_sid["ListCheckpoints"]
    assert by_sid["ListFailedDeliveries"]["Condition"] == {
        "StringLike": {"s3:prefix": {"Fn::Sub": "${FailedDeliveriesPrefix}*"}}
    }


def test_pipeline_policy_grants_redrive_only_when_asked_and_delete_only_with_its_flag() -> None:
    """Failed deliveries: no access without FailedDeliveriesBucket; read (list + get) with it;
    delete only when AllowRedriveDelete is true as well."""
    doc = template(POLICY)
    conditional = {
        when_true(item)["Sid"]: item["Fn::If"][0]
        for item in doc["Resources"]["PipelinePolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(item, dict) and "Fn::If" in item
    }
    assert conditional == {
        "ListFailedDeliveries": "ReadFailedDeliveries",
        "ReadFailedDeliveries": "ReadFailedDeliveries",
        "DeleteRedrivenDeliveries": "DeleteFailedDeliveries",
    }
    conditions = doc["Conditions"]
    assert conditions["ReadFailedDeliveries"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "FailedDeliveriesBucket"}, ""]}]
    }
    assert conditions["DeleteFailedDeliveries"] == {
        "Fn::And": [
            {"Condition": "ReadFailedDeliveries"},
            {"Fn::Equals": [{"Ref": "AllowRedriveDelete"}, "true"]},
        ]
    }
    params = doc["Parameters"]
    assert params["FailedDeliveriesBucket"]["Default"] == ""
    assert params["AllowRedriveDelete"]["Default"] == "false"
    # the default prefix is the stack's default FailedRecordsPrefix + errors/
    stack_prefix = template(FIREHOSE)["Parameters"]["FailedRecordsPrefix"]["Default"]
    assert params["FailedDeliveriesPrefix"]["Default"] == stack_prefix + "errors/"


def test_pipeline_policy_parameters_and_output() -> None:
    doc = template(POLICY)
    params = doc["Parameters"]
    for name in ("DeliveryStreamName", "SourceBucket", "SourcePrefix", "CheckpointBucket"):
        assert name in params
    assert params["CheckpointPrefix"]["Default"].endswith("/")
    assert doc["Outputs"]["PolicyArn"]["Value"] == {"Ref": "PipelinePolicy"}
