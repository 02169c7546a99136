"""The AWS infrastructure templates (k8s/aws/cloudformation/), checked offline.

- cfn-lint reports nothing (errors, warnings and informational findings);
- checkov (`--skip-download`, run once for the module) fails no check; each skip sits in the
  resource's Metadata with a reason, and no skip is stale;
- the promises the linters cannot see, read from the templates themselves: the lake bucket's
  encryption, versioning, public-access block, TLS-only and encryption-only policy and
  lifecycle; each deployable's role allowed only its own lake prefixes; the node group, IMDSv2,
  secrets encryption, EFS and the backups (k8s/aws/BACKUPS.md names where each backup lives).

A template is parsed with cfn-lint's own decoder (it knows `!Ref`, `!Sub`, `!GetAtt` ...);
`resolve` renders a value to text with the parameters' defaults, so that a policy's ARN can be
compared with the prefix it must stay under.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from recsys.settings import REPO_ROOT

AWS_DIR = REPO_ROOT / "k8s" / "aws"
TEMPLATES_DIR = AWS_DIR / "cloudformation"
TEMPLATE_NAMES = ("eks.yaml", "iam.yaml", "secrets.yaml", "storage.yaml")
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
CHECKOV = REPO_ROOT / ".tools" / "checkov" / "bin" / "checkov"
MAX_CHECKOV_SKIPS = 5  # a short list, each with its reason

PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"}
BUCKET = "lake-bucket"  # iam.yaml's LakeBucketName has no default: this stands in for it
LAKE_FOLDERS = ("raw", "features", "snapshots", "landing", "monitoring")


# --- reading templates --------------------------------------------------------------------------
def load(name: str) -> dict[str, Any]:
    return dict(cfn_yaml.load(str(TEMPLATES_DIR / name)))


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    found = sorted(p.name for p in TEMPLATES_DIR.glob("*.yaml"))
    assert found == sorted(TEMPLATE_NAMES), f"templates in {TEMPLATES_DIR}: {found}"
    return {name: load(name) for name in TEMPLATE_NAMES}


def params(template: dict[str, Any]) -> dict[str, str]:
    """Each parameter's default as text (`<Name>` when it has none; BUCKET for the bucket)."""
    out = {}
    for name, spec in template.get("Parameters", {}).items():
        default = spec.get("Default")
        out[name] = str(default) if default is not None else f"<{name}>"
    if "LakeBucketName" in out:
        out["LakeBucketName"] = BUCKET
    return out


def resolve(value: Any, template: dict[str, Any]) -> Any:
    """`value` with Ref / Sub / GetAtt rendered to text (parameters at their defaults)."""
    values = {**PSEUDO, **params(template)}
    if isinstance(value, list):
        return [resolve(v, template) for v in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return values.get(value["Ref"], f"<{value['Ref']}>")
        if set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            return f"<{'.'.join(target) if isinstance(target, list) else target}>"
        if set(value) == {"Fn::Sub"}:
            text = value["Fn::Sub"]
            assert isinstance(text, str), "only the one-argument form of Sub is used here"
            return re.sub(
                r"\$\{([^}]+)\}", lambda m: values.get(m.group(1), f"<{m.group(1)}>"), text
            )
        return {k: resolve(v, template) for k, v in value.items()}
    return value


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res.get("Type") == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in role["Properties"].get("Policies", []):
        yield from as_list(policy["PolicyDocument"]["Statement"])


def all_roles(templates: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for file, template in templates.items():
        for name, role in resources(template, "AWS::IAM::Role").items():
            yield file, name, role


def s3_grants(role: dict[str, Any], template: dict[str, Any]) -> dict[str, set[str]]:
    """Allowed S3 action -> the object / bucket ARNs it is allowed on (rendered)."""
    grants: dict[str, set[str]] = {}
    for st in statements(role):
        if st["Effect"] != "Allow":
            continue
        for action in as_list(st["Action"]):
            if action.startswith("s3:"):
                grants.setdefault(action, set()).update(as_list(resolve(st["Resource"], template)))
    return grants


def list_prefixes(role: dict[str, Any], template: dict[str, Any]) -> set[str]:
    """Every s3:prefix a role's s3:ListBucket allows (each ListBucket must name some)."""
    prefixes: set[str] = set()
    for st in statements(role):
        if st["Effect"] == "Allow" and "s3:ListBucket" in as_list(st["Action"]):
            condition = resolve(st.get("Condition", {}), template)
            named = [
                p
                for operator in ("StringLike", "StringEquals")
                for p in as_list(condition.get(operator, {}).get("s3:prefix", []))
            ]
            assert named, f"s3:ListBucket without an s3:prefix condition: {st}"
            prefixes.update(named)
    return prefixes


def object_arn(template: dict[str, Any], path: str) -> str:
    lake = params(template)["LakePrefix"]
    return f"arn:aws:s3:::{BUCKET}/{lake}/{path}"


def under(arns: set[str], template: dict[str, Any], *paths: str) -> bool:
    """Whether every ARN lies under one of the lake `paths` (an ARN pattern may not reach
    above its folder: `.../snapshots/*` is under `snapshots/`, `.../*` is not)."""
    allowed = [object_arn(template, p) for p in paths]
    return all(any(arn.startswith(a) for a in allowed) for arn in arns)


# --- cfn-lint -----------------------------------------------------------------------------------
def test_cfn_lint_reports_nothing() -> None:
    files = [str(TEMPLATES_DIR / n) for n in TEMPLATE_NAMES]
    done = subprocess.run(
        [str(CFN_LINT), "--include-checks", "I", "--format", "parseable", "--", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_every_cfn_lint_ignore_has_a_reason(templates: dict[str, dict[str, Any]]) -> None:
    """A rule ignored in Metadata (`cfn-lint: config: ignore_checks`) needs its reason beside
    it, under `cfn-lint-reasons: {<rule>: <why>}`."""
    for file, template in templates.items():
        holders = [("template", template), *template["Resources"].items()]
        for name, holder in holders:
            metadata = holder.get("Metadata", {})
            ignored = metadata.get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
            reasons = metadata.get("cfn-lint-reasons", {})
            for rule in ignored:
                assert str(reasons.get(rule, "")).strip(), f"{file} {name}: {rule} has no reason"


# --- checkov ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkov() -> dict[str, Any]:
    """checkov's JSON report on the templates' folder (one run for the module)."""
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: run `make tools` (make test does it first)")
    done = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "cloudformation",
            "--skip-download",
            "-o",
            "json",
            "-d",
            str(TEMPLATES_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # exit 1 when a check failed: the report says which, and the tests below show it
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["cloudformation"]
    return dict(reports[0])


def metadata_skips(templates: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(file, resource, check id, comment) for every checkov skip in the templates."""
    skips = []
    for file, template in templates.items():
        for name, res in template["Resources"].items():
            for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
                skips.append((file, name, str(skip.get("id", "")), str(skip.get("comment", ""))))
    return skips


@pytest.mark.slow
def test_checkov_fails_no_check(checkov: dict[str, Any], templates: dict[str, Any]) -> None:
    summary = checkov["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # it read every resource of every template, and checked them
    assert summary["resource_count"] == sum(len(t["Resources"]) for t in templates.values())
    assert summary["passed"] >= 100


@pytest.mark.slow
def test_checkov_skips_are_few_each_with_its_reason(
    checkov: dict[str, Any], templates: dict[str, dict[str, Any]]
) -> None:
    skips = metadata_skips(templates)
    assert len(skips) <= MAX_CHECKOV_SKIPS, skips
    for file, name, check, comment in skips:
        assert re.fullmatch(r"CKV2?_AWS_[0-9]+", check), f"{file} {name}: skip id {check!r}"
        assert len(comment.strip()) >= 20, f"{file} {name}: {check} is skipped without a reason"
    # what checkov skipped is exactly what the templates ask (no stale skip, no other source)
    skipped = {
        (c["file_path"].lstrip("/"), c["resource"].split(".", 1)[1], c["check_id"])
        for c in checkov["results"]["skipped_checks"]
    }
    assert skipped == {(f, n, c) for f, n, c, _ in skips}


# --- the lake bucket ----------------------------------------------------------------------------
def test_the_lake_bucket_is_encrypted_with_the_customer_key_versioned_and_private(
    templates: dict[str, dict[str, Any]],
) -> None:
    storage = templates["storage.yaml"]
    bucket = storage["Resources"]["LakeBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key_ref = rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]
    assert key_ref == {"Fn::GetAtt": ["LakeKey", "Arn"]}
    key = storage["Resources"]["LakeKey"]
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True
    assert rule["BucketKeyEnabled"] is True
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    for name in ("LakeBucket", "AccessLogBucket"):
        props = storage["Resources"][name]["Properties"]
        block = props["PublicAccessBlockConfiguration"]
        assert block == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, name
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert props["VersioningConfiguration"]["Status"] == "Enabled", name
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"], name
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}


def bucket_policy(template: dict[str, Any], bucket: str) -> list[dict[str, Any]]:
    (policy,) = [
        p
        for p in resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    return as_list(policy["Properties"]["PolicyDocument"]["Statement"])


def test_the_buckets_deny_plain_http_and_puts_not_encrypted_with_the_key(
    templates: dict[str, dict[str, Any]],
) -> None:
    storage = templates["storage.yaml"]
    for bucket in ("LakeBucket", "AccessLogBucket"):
        arn = {"Fn::GetAtt": [bucket, "Arn"]}
        tls = [
            st
            for st in bucket_policy(storage, bucket)
            if st["Effect"] == "Deny"
            and st["Principal"] == "*"
            and st["Action"] == "s3:*"
            and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        ]
        assert len(tls) == 1, f"{bucket}: no deny of non-TLS requests"
        objects = {"Fn::Sub": f"${{{bucket}.Arn}}/*"}
        assert arn in tls[0]["Resource"] and objects in tls[0]["Resource"], bucket

    denies = [
        st
        for st in bucket_policy(storage, "LakeBucket")
        if st["Effect"] == "Deny" and st["Action"] == "s3:PutObject"
    ]

    def denied_when(header: str, not_equal_to: Any) -> bool:
        # denied when the header is present (Null false) and differs from what it must be
        return any(
            st["Condition"].get("Null") == {header: "false"}
            and st["Condition"].get("StringNotEquals") == {header: not_equal_to}
            for st in denies
        )

    assert denied_when("s3:x-amz-server-side-encryption", "aws:kms")
    assert denied_when(
        "s3:x-amz-server-side-encryption-aws-kms-key-id", {"Fn::GetAtt": ["LakeKey", "Arn"]}
    )
    assert any(
        st["Condition"] == {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}}
        for st in denies
    )


def test_the_lifecycle_keeps_live_data_and_expires_only_history(
    templates: dict[str, dict[str, Any]],
) -> None:
    storage = templates["storage.yaml"]
    lake = params(storage)["LakePrefix"]
    rules = storage["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    by_prefix = {resolve(r.get("Prefix", ""), storage): r for r in rules}
    assert all(r["Status"] == "Enabled" for r in rules)
    # unfinished multipart uploads are aborted bucket-wide
    assert by_prefix[""]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == {
        "Ref": "IncompleteUploadDays"
    }
    # every lake folder's old versions expire; snapshots' after their own retention
    for folder in LAKE_FOLDERS:
        days = by_prefix[f"{lake}/{folder}/"]["NoncurrentVersionExpiration"]["NoncurrentDays"]
        expected = "SnapshotRetentionDays" if folder == "snapshots" else "NoncurrentVersionDays"
        assert days == {"Ref": expected}, folder
    # current objects expire only among monitoring exports and received alerts
    expiring = {p for p, r in by_prefix.items() if "ExpirationInDays" in r}
    assert expiring == {f"{lake}/monitoring/exports/", f"{lake}/monitoring/alerts/"}
    for prefix in expiring:
        assert by_prefix[prefix]["ExpirationInDays"] == {"Ref": "MonitoringExportDays"}
    # no object gets two different noncurrent expiries from two nested rules
    for a, rule_a in by_prefix.items():
        for b, rule_b in by_prefix.items():
            if a != b and b.startswith(a):
                days_a = rule_a.get("NoncurrentVersionExpiration")
                days_b = rule_b.get("NoncurrentVersionExpiration")
                assert not (days_a and days_b) or days_a == days_b, (a, b)
    # snapshots outlive ordinary history by default
    defaults = storage["Parameters"]
    assert (
        defaults["SnapshotRetentionDays"]["Default"] > defaults["NoncurrentVersionDays"]["Default"]
    )


# --- IAM: least privilege per deployable --------------------------------------------------------
def pod_identity_role(templates: dict[str, Any], service_account: str) -> dict[str, Any]:
    iam = templates["iam.yaml"]
    values = params(iam)
    (assoc,) = [
        a["Properties"]
        for a in resources(iam, "AWS::EKS::PodIdentityAssociation").values()
        if resolve(a["Properties"]["ServiceAccount"], iam) == service_account
    ]
    assert resolve(assoc["Namespace"], iam) == "recsys"
    assert resolve(assoc["ClusterName"], iam) == values["ClusterName"]
    role_name = assoc["RoleArn"]["Fn::GetAtt"][0]
    role = dict(iam["Resources"][role_name])
    # only Pod Identity, and only for this service account of this namespace and cluster
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    condition = resolve(trust["Condition"]["StringEquals"], iam)
    assert condition["aws:RequestTag/kubernetes-namespace"] == "recsys"
    assert condition["aws:RequestTag/kubernetes-service-account"] == service_account
    assert condition["aws:RequestTag/eks-cluster-name"] == values["ClusterName"]
    return role


@pytest.mark.parametrize("service_account", ["api", "monitoring", "pipeline"])
def test_each_deployable_has_a_pod_identity_role(
    templates: dict[str, Any], service_account: str
) -> None:
    role = pod_identity_role(templates, service_account)
    iam = templates["iam.yaml"]
    # named <prefix>-lake-*: the pattern the lake key's policy names
    name = resolve(role["Properties"]["RoleName"], iam)
    storage = templates["storage.yaml"]
    key_statements = storage["Resources"]["LakeKey"]["Properties"]["KeyPolicy"]["Statement"]
    (pattern,) = [
        resolve(st["Condition"]["ArnLike"]["aws:PrincipalArn"], storage)
        for st in key_statements
        if "ArnLike" in st.get("Condition", {})
    ]
    assert fnmatch.fnmatch(f"arn:aws:iam::123456789012:role/{name}", pattern)
    # the lake key, through S3 only
    kms = [
        st for st in statements(role) if any(a.startswith("kms:") for a in as_list(st["Action"]))
    ]
    assert kms and all(
        st["Resource"] == {"Ref": "LakeKeyArn"}
        and resolve(st["Condition"]["StringEquals"]["kms:ViaService"], iam)
        == "s3.eu-west-1.amazonaws.com"
        and set(as_list(st["Action"])) <= {"kms:Decrypt", "kms:GenerateDataKey"}
        for st in kms
    )


def test_the_api_reads_snapshots_and_writes_landing_only(templates: dict[str, Any]) -> None:
    iam = templates["iam.yaml"]
    role = pod_identity_role(templates, "api")
    grants = s3_grants(role, iam)
    assert set(grants) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject"}
    # reads: snapshots/, and its own landed batches back (Idempotency-Key, api/events.py)
    assert under(grants["s3:GetObject"], iam, "snapshots/", "landing/events/")
    assert object_arn(iam, "snapshots/*") in grants["s3:GetObject"]
    assert under(grants["s3:PutObject"], iam, "landing/events/", "landing/impressions/")
    assert grants["s3:ListBucket"] == {f"arn:aws:s3:::{BUCKET}"}
    lake = params(iam)["LakePrefix"]
    assert all(
        p.startswith((f"{lake}/snapshots", f"{lake}/landing/events"))
        for p in list_prefixes(role, iam)
    )
    # and never ingest's bookkeeping folders
    denied = [st for st in statements(role) if st["Effect"] == "Deny"]
    assert {object_arn(iam, "landing/events/_*"), object_arn(iam, "landing/impressions/_*")} <= {
        arn for st in denied for arn in as_list(resolve(st["Resource"], iam))
    }


def test_monitoring_reads_monitoring_and_writes_only_its_alerts(templates: dict[str, Any]) -> None:
    iam = templates["iam.yaml"]
    role = pod_identity_role(templates, "monitoring")
    grants = s3_grants(role, iam)
    assert set(grants) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject"}
    assert under(grants["s3:GetObject"], iam, "monitoring/")
    assert grants["s3:PutObject"] == {object_arn(iam, "monitoring/alerts/*")}
    lake = params(iam)["LakePrefix"]
    assert all(p.startswith(f"{lake}/monitoring") for p in list_prefixes(role, iam))


def test_the_pipeline_works_in_its_lake_folders_only(templates: dict[str, Any]) -> None:
    iam = templates["iam.yaml"]
    role = pod_identity_role(templates, "pipeline")
    grants = s3_grants(role, iam)
    object_actions = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    assert set(grants) == object_actions | {"s3:ListBucket"}
    folders = [f"{f}/" for f in LAKE_FOLDERS]
    for action in object_actions:
        assert grants[action] == {object_arn(iam, f"{f}*") for f in folders}, action
    lake = params(iam)["LakePrefix"]
    prefixes = list_prefixes(role, iam)
    # the bucket's top level, one level deep (Lake.check_access), and the lake folders
    assert "" in prefixes
    assert all(
        p == "" or p.startswith(tuple(f"{lake}/{f}" for f in LAKE_FOLDERS)) for p in prefixes
    )
    # and never the monitoring service's record of the alerts it received
    denied = [
        s
        for s in statements(role)
        if s["Effect"] == "Deny" and "s3:PutObject" in as_list(s["Action"])
    ]
    assert [resolve(s["Resource"], iam) for s in denied] == [object_arn(iam, "monitoring/alerts/*")]


def test_no_role_has_wildcard_actions_or_s3_on_every_resource(templates: dict[str, Any]) -> None:
    for file, name, role in all_roles(templates):
        for st in statements(role):
            actions = as_list(st["Action"])
            where = f"{file} {name} {st.get('Sid', '')}"
            assert all(a != "*" and not a.endswith(":*") for a in actions), where
            assert "NotAction" not in st and "NotResource" not in st, where
            if any(a.startswith("s3:") for a in actions):
                assert all(r != "*" for r in as_list(resolve(st["Resource"], templates[file])))
                assert all(a.split(":", 1)[1][0] != "*" for a in actions), where
            # a version is history: only the lifecycle deletes it
            assert "s3:DeleteObjectVersion" not in actions, where


def test_external_secrets_reads_only_the_recsys_secrets(templates: dict[str, Any]) -> None:
    iam, secrets = templates["iam.yaml"], templates["secrets.yaml"]
    role = iam["Resources"]["ExternalSecretsRole"]
    allowed = [st for st in statements(role) if st["Effect"] == "Allow"]
    actions = {a for st in allowed for a in as_list(st["Action"])}
    assert actions == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
        "kms:Decrypt",
    }
    (sm,) = [st for st in allowed if "secretsmanager:GetSecretValue" in st["Action"]]
    pattern = resolve(sm["Resource"], iam)
    assert pattern == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:recsys/*"
    # every secret the stack makes is under that name, generated, and KMS-encrypted
    made = resources(secrets, "AWS::SecretsManager::Secret")
    assert len(made) == 2
    for name, secret in made.items():
        props = secret["Properties"]
        secret_name = resolve(props["Name"], secrets)
        secret_arn = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{secret_name}-AbCdEf"
        assert fnmatch.fnmatch(secret_arn, pattern), name
        assert "SecretString" not in props and props["GenerateSecretString"]["PasswordLength"] >= 16
        assert props["KmsKeyId"] == {"Ref": "SecretsKey"}
    (kms,) = [st for st in allowed if st["Action"] == "kms:Decrypt"]
    assert kms["Resource"] == {"Ref": "SecretsKeyArn"}
    assert resolve(kms["Condition"], iam) == {
        "StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}
    }


def test_the_stacks_agree_on_names(templates: dict[str, Any]) -> None:
    defaults = {
        file: {k: v.get("Default") for k, v in t.get("Parameters", {}).items()}
        for file, t in templates.items()
    }
    assert defaults["storage.yaml"]["LakePrefix"] == defaults["iam.yaml"]["LakePrefix"] == "lake"
    prefixes = {d["NamePrefix"] for d in defaults.values() if "NamePrefix" in d}
    assert prefixes == {"recsys"}
    assert defaults["eks.yaml"]["ClusterName"] == defaults["iam.yaml"]["ClusterName"]


# --- EKS ----------------------------------------------------------------------------------------
def test_the_node_group_is_three_t3_large_with_imdsv2_required(templates: dict[str, Any]) -> None:
    eks = templates["eks.yaml"]
    (group,) = resources(eks, "AWS::EKS::Nodegroup").values()
    props = group["Properties"]
    assert props["InstanceTypes"] == ["t3.large"]
    scaling = resolve(props["ScalingConfig"], eks)
    assert (scaling["MinSize"], scaling["DesiredSize"]) == (3, 3)
    assert int(scaling["MaxSize"]) > 3  # room for the Cluster Autoscaler
    assert props["Subnets"] == {"Ref": "PrivateSubnetIds"}
    template_name = props["LaunchTemplate"]["Id"]["Ref"]
    data = eks["Resources"][template_name]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["Encrypted"] is True


def test_the_cluster_encrypts_secrets_logs_everything_and_keeps_its_endpoint_close(
    templates: dict[str, Any],
) -> None:
    eks = templates["eks.yaml"]
    (cluster,) = resources(eks, "AWS::EKS::Cluster").values()
    props = cluster["Properties"]
    (encryption,) = props["EncryptionConfig"]
    assert encryption["Resources"] == ["secrets"]
    key_name = encryption["Provider"]["KeyArn"]["Fn::GetAtt"][0]
    assert eks["Resources"][key_name]["Properties"]["EnableKeyRotation"] is True
    types = {t["Type"] for t in props["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert types == {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    vpc = props["ResourcesVpcConfig"]
    assert vpc["EndpointPrivateAccess"] is True
    assert vpc["PublicAccessCidrs"] == [{"Ref": "PublicAccessCidr"}]
    assert "Default" not in eks["Parameters"]["PublicAccessCidr"]  # chosen, never assumed
    (rule,) = eks["Rules"].values()
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PublicAccessCidr"}, "0.0.0.0/0"]}]
    }
    assert props["AccessConfig"]["AuthenticationMode"] == "API"
    assert resolve(props["Version"], eks) == "1.33"


def test_the_cluster_has_its_add_ons_and_their_pod_identities(templates: dict[str, Any]) -> None:
    eks = templates["eks.yaml"]
    addons = {a["Properties"]["AddonName"]: a for a in resources(eks, "AWS::EKS::Addon").values()}
    assert set(addons) == {
        "vpc-cni",
        "kube-proxy",
        "coredns",
        "eks-pod-identity-agent",
        "aws-efs-csi-driver",
    }
    (efs,) = addons["aws-efs-csi-driver"]["Properties"]["PodIdentityAssociations"]
    assert efs["ServiceAccount"] == "efs-csi-controller-sa"
    efs_role = eks["Resources"][efs["RoleArn"]["Fn::GetAtt"][0]]
    assert efs_role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "pods.eks.amazonaws.com"
    }
    (autoscaler,) = resources(eks, "AWS::EKS::PodIdentityAssociation").values()
    assert autoscaler["Properties"]["ServiceAccount"] == "cluster-autoscaler"
    scaling = eks["Resources"]["ClusterAutoscalerRole"]
    (scale,) = [
        st for st in statements(scaling) if "autoscaling:SetDesiredCapacity" in st["Action"]
    ]
    # it may resize only this cluster's groups
    assert resolve(scale["Condition"]["StringEquals"]["aws:ResourceTag/eks:cluster-name"], eks) == (
        "recsys"
    )


# --- EFS and backups ----------------------------------------------------------------------------
def test_efs_is_encrypted_tls_only_and_reachable_from_the_nodes_only(
    templates: dict[str, Any],
) -> None:
    storage = templates["storage.yaml"]
    (fs,) = resources(storage, "AWS::EFS::FileSystem").values()
    props = fs["Properties"]
    assert props["Encrypted"] is True and props["KmsKeyId"] == {"Fn::GetAtt": ["LakeKey", "Arn"]}
    assert props["BackupPolicy"]["Status"] == "ENABLED"
    policy = props["FileSystemPolicy"]["Statement"]
    assert any(
        st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for st in policy
    )
    allowed = {a for st in policy if st["Effect"] == "Allow" for a in as_list(st["Action"])}
    assert "elasticfilesystem:ClientRootAccess" not in allowed
    (group,) = resources(storage, "AWS::EC2::SecurityGroup").values()
    (ingress,) = group["Properties"]["SecurityGroupIngress"]
    assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("tcp", 2049, 2049)
    assert ingress["SourceSecurityGroupId"] == {"Ref": "NodeSecurityGroupId"}
    assert "CidrIp" not in ingress
    targets = resources(storage, "AWS::EFS::MountTarget").values()
    subnets = sorted(t["Properties"]["SubnetId"]["Fn::Select"][0] for t in targets)
    assert subnets == [0, 1, 2]


def test_backups_run_daily_and_hourly_into_an_encrypted_vault(templates: dict[str, Any]) -> None:
    storage = templates["storage.yaml"]
    res = storage["Resources"]
    assert res["BackupVault"]["Properties"]["EncryptionKeyArn"] == {
        "Fn::GetAtt": ["LakeKey", "Arn"]
    }
    schedules = {}
    for plan_name, plan in resources(storage, "AWS::Backup::BackupPlan").items():
        (rule,) = plan["Properties"]["BackupPlan"]["BackupPlanRule"]
        assert rule["TargetBackupVault"] == {"Ref": "BackupVault"}
        assert "DeleteAfterDays" in rule["Lifecycle"]
        (selection,) = [
            s["Properties"]["BackupSelection"]
            for s in resources(storage, "AWS::Backup::BackupSelection").values()
            if s["Properties"]["BackupPlanId"] == {"Ref": plan_name}
        ]
        (tag,) = selection["ListOfTags"]
        schedules[rule["ScheduleExpression"]] = tag["ConditionKey"]
    assert schedules == {
        "cron(0 3 * * ? *)": "recsys:backup-daily",
        "cron(0 * * * ? *)": "recsys:backup-hourly",
    }

    def tags(tag_list: list[dict[str, Any]]) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in tag_list}

    bucket_tags = tags(res["LakeBucket"]["Properties"]["Tags"])
    efs_tags = tags(res["FileSystem"]["Properties"]["FileSystemTags"])
    # models and snapshots daily (bucket and EFS cache); the bucket's monitoring/ hourly
    assert bucket_tags["recsys:backup-daily"] == efs_tags["recsys:backup-daily"] == "true"
    assert bucket_tags["recsys:backup-hourly"] == "true"


def test_backups_md_names_only_what_exists(templates: dict[str, Any]) -> None:
    text = (AWS_DIR / "BACKUPS.md").read_text(encoding="utf-8")
    named = re.findall(r"`([a-z]+\.yaml):([A-Za-z0-9]+)`", text)
    assert len(named) >= 8
    for file, resource in named:
        assert resource in templates[file]["Resources"], f"BACKUPS.md names {file}:{resource}"
    for backup in (
        "S3 versioning",
        "Snapshot retention",
        "Daily copy of models",
        "Hourly metrics backup",
        "Configuration in git",
    ):
        assert f"| {backup} |" in text, backup


def test_the_cni_enforces_the_network_policies(templates: dict[str, Any]) -> None:
    """k8s/ denies by default: without the VPC CNI's policy agent EKS would enforce nothing."""
    (addon,) = [
        r
        for r in resources(templates["eks.yaml"], "AWS::EKS::Addon").values()
        if r["Properties"]["AddonName"] == "vpc-cni"
    ]
    values = json.loads(addon["Properties"]["ConfigurationValues"])
    assert values["enableNetworkPolicy"] == "true"
