"""Policy tests of infra/terraform (parsed with python-hcl2), plus terraform fmt/validate and checkov.

Offline: fmt/validate need terraform (and the provider mirror /opt/tf-plugins for validate) and skip
otherwise; the checkov test (slow: creates its own venv from PyPI) runs infra/terraform/check.sh.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install python-hcl2)")

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infra" / "terraform"
PLUGIN_DIR = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")

TABLES = ["slides", "spots", "expression", "genes", "annotations", "rejects", "pairs", "gene_panels"]
WILDCARD_ACTIONS = {"*", "s3:*", "kms:*", "iam:*", "glue:*", "athena:*", "sts:*", "ec2:*"}
READ_ONLY_ACTIONS = {"s3:GetObject", "s3:ListBucket", "kms:Decrypt", "kms:DescribeKey"}


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

def _unquote(value):
    """Strip HCL string quotes left by some python-hcl2 versions, recursively (keys too)."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    return value


def _load(path: Path) -> dict:
    with open(path) as f:
        try:
            from hcl2 import SerializationOptions
        except ImportError:  # python-hcl2 < 7
            return _unquote(hcl2.load(f))
        opts = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
        return _unquote(hcl2.load(f, serialization_options=opts))


class Config:
    def __init__(self, tf_dir: Path):
        self.files = sorted(tf_dir.glob("*.tf"))
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.locals: dict = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.terraform: list[dict] = []
        for path in self.files:
            doc = _load(path)
            for kind, store in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, by_name in block.items():
                        for name, body in by_name.items():
                            assert (rtype, name) not in store, f"duplicate {kind} {rtype}.{name}"
                            store[(rtype, name)] = body
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            self.terraform += doc.get("terraform", [])
        self.text = {p.name: p.read_text() for p in self.files}

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}

    def policy_doc(self, name: str) -> dict:
        return self.data[("aws_iam_policy_document", name)]

    def statements(self, doc_name: str) -> list[dict]:
        return _blocks(self.policy_doc(doc_name), "statement")


def _blocks(body: dict, key: str) -> list[dict]:
    """A nested block as a list of dicts (however many there are)."""
    value = body.get(key, [])
    return value if isinstance(value, list) else [value]


def _one(body: dict, key: str) -> dict:
    blocks = _blocks(body, key)
    assert len(blocks) == 1, f"expected one {key} block, got {len(blocks)}"
    return blocks[0]


def _refs(value, rtype: str, name: str) -> bool:
    return f"{rtype}.{name}." in str(value)


def _doc_name(policy_expr: str) -> str:
    m = re.search(r"data\.aws_iam_policy_document\.(\w+)\.json", policy_expr)
    assert m, f"policy is not an aws_iam_policy_document: {policy_expr}"
    return m.group(1)


@pytest.fixture(scope="module")
def tf() -> Config:
    if not TF_DIR.is_dir():
        pytest.skip(f"{TF_DIR} missing")
    return Config(TF_DIR)


# --------------------------------------------------------------------------------------------------
# Layout, versions, variables, outputs
# --------------------------------------------------------------------------------------------------

def test_files_present():
    for name in ("versions.tf", "variables.tf", "kms.tf", "s3.tf", "iam.tf", "emr.tf", "glue_athena.tf",
                 "training.tf", "outputs.tf", "README.md", ".gitignore", "check.sh", "env/Dockerfile",
                 "tests/plan.tftest.hcl"):
        assert (TF_DIR / name).is_file(), name


def test_gitignore_keeps_terraform_state_out_of_git():
    lines = set((TF_DIR / ".gitignore").read_text().split())
    assert {".terraform/", ".terraform.lock.hcl", "*.tfstate"} <= lines


def test_versions_pinned(tf):
    block = tf.terraform[0]
    assert block["required_version"] == ">= 1.5"
    providers = _blocks(block, "required_providers")[0]
    assert providers["aws"]["source"] == "hashicorp/aws"
    assert providers["aws"]["version"] == "~> 5.100"


def test_variables_and_outputs(tf):
    for var in ("region", "name_prefix", "lake_bucket_name", "logs_bucket_name", "tags", "training_instance_type",
                "training_ami_id", "emr_subnet_ids", "training_subnet_id", "vpc_id", "emr_release_label"):
        assert var in tf.variables, var
    assert tf.variables["training_instance_type"]["default"] == "g5.xlarge"
    assert tf.variables["emr_release_label"]["default"].startswith("emr-7.")
    for out in ("lake_bucket", "logs_bucket", "emr_job_role_arn", "training_role_arn", "emr_application_id",
                "glue_database", "athena_workgroup", "training_launch_template_id", "kms_key_arn"):
        assert out in tf.outputs, out
        assert tf.outputs[out].get("description"), f"output {out} has no description"


# --------------------------------------------------------------------------------------------------
# KMS + S3
# --------------------------------------------------------------------------------------------------

def test_kms_key_rotation_and_no_wildcard_action(tf):
    key = tf.resources[("aws_kms_key", "lake")]
    assert key["enable_key_rotation"] is True
    policy = str(key["policy"])
    assert "kms:*" not in policy
    assert not re.search(r"Action\s*=\s*\"\*\"", tf.text["kms.tf"])


def test_buckets(tf):
    buckets = tf.of_type("aws_s3_bucket")
    assert set(buckets) == {"lake", "logs"}


def test_lake_bucket_encrypted_with_project_kms_key(tf):
    sse = tf.of_type("aws_s3_bucket_server_side_encryption_configuration")
    lake = [b for b in sse.values() if _refs(b["bucket"], "aws_s3_bucket", "lake")]
    assert len(lake) == 1
    default = _one(_one(lake[0], "rule"), "apply_server_side_encryption_by_default")
    assert default["sse_algorithm"] == "aws:kms"
    assert _refs(default["kms_master_key_id"], "aws_kms_key", "lake")


def test_every_bucket_encrypted_versioned_and_public_access_blocked(tf):
    for bucket in tf.of_type("aws_s3_bucket"):
        def of(rtype, bucket=bucket):
            found = [b for b in tf.of_type(rtype).values() if _refs(b["bucket"], "aws_s3_bucket", bucket)]
            assert len(found) == 1, f"{rtype} for bucket {bucket}"
            return found[0]

        sse = _one(_one(of("aws_s3_bucket_server_side_encryption_configuration"), "rule"),
                   "apply_server_side_encryption_by_default")
        assert sse["sse_algorithm"] in ("aws:kms", "AES256")
        assert _one(of("aws_s3_bucket_versioning"), "versioning_configuration")["status"] == "Enabled"
        pab = of("aws_s3_bucket_public_access_block")
        for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
            assert pab[flag] is True, f"{bucket}: {flag}"
        assert _one(of("aws_s3_bucket_ownership_controls"), "rule")["object_ownership"] == "BucketOwnerEnforced"
        of("aws_s3_bucket_lifecycle_configuration")


def test_every_bucket_has_tls_only_policy(tf):
    for bucket in tf.of_type("aws_s3_bucket"):
        policies = [p for p in tf.of_type("aws_s3_bucket_policy").values()
                    if _refs(p["bucket"], "aws_s3_bucket", bucket)]
        assert len(policies) == 1, bucket
        statements = tf.statements(_doc_name(policies[0]["policy"]))
        tls = [s for s in statements if s.get("effect") == "Deny"
               and any(c["variable"] == "aws:SecureTransport" and c["test"] == "Bool" and c["values"] == ["false"]
                       for c in _blocks(s, "condition"))]
        assert tls, f"bucket {bucket} has no TLS-only deny statement"
        resources = tls[0]["resources"]
        assert any(r.endswith(f"aws_s3_bucket.{bucket}.arn}}") for r in resources), resources
        assert any(r.endswith("/*") for r in resources), resources
        principals = _one(tls[0], "principals")
        assert principals["identifiers"] == ["*"]


def test_lake_bucket_policy_requires_the_project_key(tf):
    statements = tf.statements("lake_bucket")
    kms = [s for s in statements if s.get("effect") == "Deny" and any(
        c["variable"] == "s3:x-amz-server-side-encryption-aws-kms-key-id" for c in _blocks(s, "condition"))]
    assert kms and _refs(_one(kms[0], "condition")["values"], "aws_kms_key", "lake")


def test_lake_lifecycle_noncurrent_versions_and_scratch(tf):
    assert tf.locals["scratch_prefix"] == "scratch/"
    lifecycle = [b for b in tf.of_type("aws_s3_bucket_lifecycle_configuration").values()
                 if _refs(b["bucket"], "aws_s3_bucket", "lake")][0]
    rules = _blocks(lifecycle, "rule")
    assert all(r["status"] == "Enabled" for r in rules)
    assert any(_blocks(r, "noncurrent_version_expiration") and not _one(r, "filter").get("prefix") for r in rules), \
        "no bucket-wide noncurrent-version expiration"
    scratch = [r for r in rules if _one(r, "filter").get("prefix") == "${local.scratch_prefix}"]
    assert scratch and _one(scratch[0], "expiration")["days"]
    assert any(_blocks(r, "abort_incomplete_multipart_upload") for r in rules)


def test_lake_access_logging_into_logs_bucket(tf):
    logging = tf.of_type("aws_s3_bucket_logging")
    assert len(logging) == 1
    (body,) = logging.values()
    assert _refs(body["bucket"], "aws_s3_bucket", "lake")
    assert _refs(body["target_bucket"], "aws_s3_bucket", "logs")


# --------------------------------------------------------------------------------------------------
# IAM
# --------------------------------------------------------------------------------------------------

def _allow_statements(tf: Config):
    for (rtype, name), body in tf.data.items():
        if rtype != "aws_iam_policy_document":
            continue
        for st in _blocks(body, "statement"):
            yield name, st


def test_no_wildcard_actions_in_any_allow(tf):
    for name, st in _allow_statements(tf):
        actions = set(st.get("actions", [])) | set(st.get("not_actions", []))
        if st.get("effect", "Allow") == "Allow":
            assert not actions & WILDCARD_ACTIONS, f"{name}/{st.get('sid')}: {actions & WILDCARD_ACTIONS}"
            assert "*" not in st.get("resources", []), f"{name}/{st.get('sid')}: Resource = *"
            assert not st.get("not_actions"), f"{name}/{st.get('sid')}: NotAction in an Allow"
        else:
            # The only "s3:*" allowed is a Deny (TLS-only bucket policies).
            assert actions <= WILDCARD_ACTIONS | {"s3:PutObject"}, name


def test_role_policies_have_no_star_anything(tf):
    """Role policies: no "*" / "service:*" action, no "*" resource, no Deny needed either."""
    for body in tf.of_type("aws_iam_role_policy").values():
        for st in tf.statements(_doc_name(body["policy"])):
            for action in st["actions"]:
                assert action != "*" and not action.endswith(":*"), action
            for res in st["resources"]:
                assert res != "*", st.get("sid")
    assert not tf.of_type("aws_iam_role_policy_attachment"), "no managed policies on the stack's roles"
    assert not tf.of_type("aws_iam_policy_attachment")


def test_training_role_is_read_only_on_lake(tf):
    policies = [b for b in tf.of_type("aws_iam_role_policy").values() if _refs(b["role"], "aws_iam_role", "training")]
    assert len(policies) == 1
    statements = tf.statements(_doc_name(policies[0]["policy"]))
    for st in statements:
        assert st.get("effect", "Allow") == "Allow"
        assert set(st["actions"]) <= READ_ONLY_ACTIONS, st["actions"]
        for res in st["resources"]:
            if any(a.startswith("s3:") for a in st["actions"]):
                assert "lake_bucket_arn" in res, res
                if "s3:GetObject" in st["actions"]:
                    assert res.endswith("/${local.lake_prefix}*"), res
            else:
                assert _refs(res, "aws_kms_key", "lake"), res
        if "s3:ListBucket" in st["actions"]:
            cond = _one(st, "condition")
            assert cond["variable"] == "s3:prefix"
            assert all(v.startswith("${local.lake_prefix}") for v in cond["values"]), cond["values"]
    assert tf.locals["lake_prefix"] == "lake/"
    profile = tf.resources[("aws_iam_instance_profile", "training")]
    assert _refs(profile["role"], "aws_iam_role", "training")


def test_emr_job_role_scoped_to_prefixes_key_and_stlake_db(tf):
    policies = [b for b in tf.of_type("aws_iam_role_policy").values() if _refs(b["role"], "aws_iam_role", "emr_job")]
    assert len(policies) == 1
    write_actions = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    writable = {"${local.lake_prefix}*", "${local.scratch_prefix}*", "${local.emr_logs_prefix}*"}
    readable = writable | {"${local.raw_prefix}*", "${local.artifacts_prefix}*"}
    for st in tf.statements(_doc_name(policies[0]["policy"])):
        actions = set(st["actions"])
        for res in st["resources"]:
            if actions & write_actions:
                assert res.split("/", 1)[1] in writable, res
            if "s3:GetObject" in actions:
                assert res.split("/", 1)[1] in readable, res
            if any(a.startswith("kms:") for a in actions):
                assert _refs(res, "aws_kms_key", "lake"), res
            if any(a.startswith("glue:") for a in actions):
                assert res in ("${local.glue_catalog_arn}", "${local.glue_database_arn}", "${local.glue_tables_arn}",
                               "${local.glue_default_database_arn}"), res
        if any(a.startswith("glue:") for a in actions):
            assert all(a.startswith("glue:Get") or a.startswith("glue:BatchGet") for a in actions), actions
        if "${local.glue_default_database_arn}" in st["resources"]:
            assert actions == {"glue:GetDatabase"}
    assert "database/${var.glue_database_name}" in tf.locals["glue_database_arn"]
    trust = tf.statements("emr_job_trust")[0]
    assert _one(trust, "principals")["identifiers"] == ["emr-serverless.amazonaws.com"]


# --------------------------------------------------------------------------------------------------
# EMR Serverless, Glue / Athena, training node
# --------------------------------------------------------------------------------------------------

def test_emr_serverless_spark_application(tf):
    app = tf.resources[("aws_emrserverless_application", "spark")]
    assert app["type"] == "spark"
    assert app["release_label"] == "${var.emr_release_label}"
    assert _one(app, "auto_stop_configuration")["enabled"] is True
    assert _one(app, "maximum_capacity")


def test_glue_tables_are_delta(tf):
    db = tf.resources[("aws_glue_catalog_database", "stlake")]
    assert db["name"] == "${var.glue_database_name}"
    assert tf.variables["glue_database_name"]["default"] == "stlake"
    table = tf.resources[("aws_glue_catalog_table", "delta")]
    assert table["for_each"] == "${local.delta_tables}"
    assert set(tf.locals["delta_tables"]) == set(TABLES)
    assert table["table_type"] == "EXTERNAL_TABLE"
    params = table["parameters"]
    assert params["table_type"] == "DELTA"
    assert params["spark.sql.sources.provider"] == "delta"
    sd = _one(table, "storage_descriptor")
    assert sd["location"] == "${local.lake_uri}/${each.key}"
    assert _one(sd, "ser_de_info")["parameters"]["path"] == sd["location"]
    assert "local.lake_prefix" in tf.locals["lake_uri"]


def _hive_type(arrow_type) -> str:
    import pyarrow as pa

    for check, name in ((pa.types.is_string, "string"), (pa.types.is_int32, "int"), (pa.types.is_int64, "bigint"),
                        (pa.types.is_float64, "double"), (pa.types.is_float32, "float"),
                        (pa.types.is_boolean, "boolean"), (pa.types.is_binary, "binary"),
                        (pa.types.is_timestamp, "timestamp")):
        if check(arrow_type):
            return name
    if pa.types.is_list(arrow_type):
        return f"array<{_hive_type(arrow_type.value_type)}>"
    raise AssertionError(f"no Hive type for {arrow_type}")


def test_glue_columns_match_stlake_schemas(tf):
    pytest.importorskip("pyarrow")
    sys.path.insert(0, str(ROOT / "lib"))
    try:
        from stlake.lake.schemas import TABLES as SCHEMAS
    finally:
        sys.path.remove(str(ROOT / "lib"))
    declared = tf.locals["delta_tables"]
    assert set(declared) == set(SCHEMAS)
    for name, schema in SCHEMAS.items():
        expected = [[f.name, _hive_type(f.type)] for f in schema]
        assert [list(c) for c in declared[name]] == expected, f"Glue columns of {name} drifted from stlake.lake.schemas"


def test_athena_workgroup_enforced_and_kms_encrypted(tf):
    wg = tf.resources[("aws_athena_workgroup", "stlake")]
    conf = _one(wg, "configuration")
    assert conf["enforce_workgroup_configuration"] is True
    result = _one(conf, "result_configuration")
    assert "${local.athena_prefix}" in result["output_location"]
    enc = _one(result, "encryption_configuration")
    assert enc["encryption_option"] == "SSE_KMS"
    assert _refs(enc["kms_key_arn"], "aws_kms_key", "lake")


def test_training_launch_template(tf):
    lt = tf.resources[("aws_launch_template", "training")]
    assert lt["instance_type"] == "${var.training_instance_type}"
    assert lt["image_id"] == "${var.training_ami_id}"
    meta = _one(lt, "metadata_options")
    assert meta["http_tokens"] == "required"
    assert meta["http_endpoint"] == "enabled"
    ebs = _one(_one(lt, "block_device_mappings"), "ebs")
    assert ebs["encrypted"] is True
    assert _refs(ebs["kms_key_id"], "aws_kms_key", "lake")
    assert _refs(_one(lt, "iam_instance_profile")["arn"], "aws_iam_instance_profile", "training")
    assert _one(lt, "network_interfaces")["associate_public_ip_address"] is False


def test_security_groups_have_no_ingress(tf):
    for name, sg in tf.of_type("aws_security_group").items():
        assert not sg.get("ingress"), name
    assert not tf.of_type("aws_vpc_security_group_ingress_rule")
    assert not tf.of_type("aws_security_group_rule")


# --------------------------------------------------------------------------------------------------
# Waivers and README
# --------------------------------------------------------------------------------------------------

def test_checkov_waivers_are_few_and_reasoned(tf):
    waivers = []
    for name, text in tf.text.items():
        for m in re.finditer(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", text):
            waivers.append((name, m.group(1), (m.group(2) or "").strip()))
    for name, check, reason in waivers:
        assert len(reason) >= 30, f"{name}: waiver {check} needs a written reason"
    assert len(waivers) <= 8, waivers
    readme = (TF_DIR / "README.md").read_text()
    for _, check, _ in waivers:
        assert check in readme, f"waiver {check} is not documented in README.md"


def test_readme_has_the_commands():
    readme = (TF_DIR / "README.md").read_text()
    for needle in ("terraform init", "terraform plan", "terraform apply", "venv-pack",
                   "aws emr-serverless start-job-run", "jobs/ingest.py", "entryPointArguments",
                   "sparkSubmitParameters", "spark.archives=", "stlake-env.tar.gz#environment",
                   "spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python",
                   "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
                   "/usr/share/aws/delta/lib/", "aws athena start-query-execution", "--work-group",
                   "stlake sql", "If-None-Match", "AWS_S3_ALLOW_UNSAFE_RENAME"):
        assert needle in readme, needle


# --------------------------------------------------------------------------------------------------
# terraform fmt / validate, checkov
# --------------------------------------------------------------------------------------------------

def _tf_env(tmp_path: Path) -> dict:
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    cfg = env.get("TF_CLI_CONFIG_FILE")
    if (cfg and not os.path.isfile(cfg)) or (not cfg and not os.path.isfile(os.path.expanduser("~/.terraformrc"))):
        rc = tmp_path / "terraformrc"
        rc.write_text("")
        env["TF_CLI_CONFIG_FILE"] = str(rc)
    return env


@pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH")
def test_terraform_fmt(tmp_path):
    proc = subprocess.run([TERRAFORM, "fmt", "-check", "-diff", "-recursive", str(TF_DIR)],
                          capture_output=True, text=True, env=_tf_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH")
@pytest.mark.skipif(not PLUGIN_DIR.is_dir(), reason=f"no {PLUGIN_DIR} provider mirror (offline init impossible)")
def test_terraform_validate_and_mocked_apply(tmp_path):
    work = tmp_path / "tf"
    work.mkdir()
    for path in TF_DIR.glob("*.tf"):
        shutil.copy(path, work)
    if (TF_DIR / "tests").is_dir():
        shutil.copytree(TF_DIR / "tests", work / "tests")
    env = _tf_env(tmp_path)
    init = subprocess.run([TERRAFORM, "init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-input=false",
                           "-no-color"], cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    validate = subprocess.run([TERRAFORM, "validate", "-no-color"], cwd=work, capture_output=True, text=True,
                              env=env, timeout=300)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    # terraform test with the mocked provider of tests/plan.tftest.hcl (mock_provider: Terraform >= 1.7)
    version = subprocess.run([TERRAFORM, "version", "-json"], capture_output=True, text=True, env=env).stdout
    m = re.search(r'"terraform_version":\s*"(\d+)\.(\d+)', version)
    if m and (int(m.group(1)), int(m.group(2))) >= (1, 7):
        test = subprocess.run([TERRAFORM, "test", "-no-color"], cwd=work, capture_output=True, text=True,
                              env=env, timeout=600)
        assert test.returncode == 0, test.stdout + test.stderr
        assert "0 failed" in test.stdout, test.stdout


@pytest.mark.slow
def test_checkov_via_check_sh():
    """check.sh: fmt, validate (or SKIP) and checkov from its own venv -- zero failed checks, no parse errors."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not available")
    proc = subprocess.run(["bash", str(TF_DIR / "check.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    m = re.search(r"checkov summary: passed=(\d+) failed=(\d+) skipped=(\d+) parsing_errors=(\d+)", out)
    assert m, out[-3000:]
    passed, failed, skipped, parsing_errors = map(int, m.groups())
    assert failed == 0 and parsing_errors == 0
    assert passed > 100
