#!/usr/bin/env bash
# Offline checks of infra/terraform (no network needed beyond PyPI for the checkov venv):
#   1. terraform fmt -check
#   2. terraform init -backend=false -plugin-dir=$TF_PLUGIN_DIR + terraform validate + terraform test
#      (tests/*.tftest.hcl, mocked provider), in a temp copy (nothing is written into the repo);
#      skipped when terraform or the plugin mirror is missing
#   3. checkov from its own venv ($CHECKOV_VENV, created with pip when missing); fails on any failed
#      check or parsing error. Waivers are inline `#checkov:skip=CKV_...:reason` comments in the .tf files.
#
# Usage: bash infra/terraform/check.sh        (from anywhere; `make terraform-check`)
# Env:   TF_PLUGIN_DIR (default /opt/tf-plugins), CHECKOV_VENV (default .venv-checkov, relative to the
#        repository root), CHECKOV_VERSION (default 3.3.30), PYTHON (default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

TF_PLUGIN_DIR="${TF_PLUGIN_DIR:-/opt/tf-plugins}"
CHECKOV_VENV="${CHECKOV_VENV:-.venv-checkov}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Terraform: no version-check calls home, and no warning about a missing CLI config file.
export CHECKPOINT_DISABLE=1
if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "$TF_CLI_CONFIG_FILE" ]] \
  || [[ -z "${TF_CLI_CONFIG_FILE:-}" && ! -f "$HOME/.terraformrc" ]]; then
  : >"$TMP/terraformrc"
  export TF_CLI_CONFIG_FILE="$TMP/terraformrc"
fi

# --- 1 + 2: terraform fmt / validate ---------------------------------------------------------------
if command -v terraform >/dev/null 2>&1; then
  echo "== terraform fmt -check"
  if ! terraform fmt -check -diff -recursive "$HERE"; then
    echo "FAIL terraform fmt: run 'terraform fmt infra/terraform'" >&2
    exit 1
  fi

  if [[ -d "$TF_PLUGIN_DIR" ]]; then
    echo "== terraform init -backend=false -plugin-dir=$TF_PLUGIN_DIR + validate (temp copy)"
    mkdir -p "$TMP/tf"
    cp "$HERE"/*.tf "$TMP/tf/"
    cp -r "$HERE/tests" "$TMP/tf/tests"
    (
      cd "$TMP/tf"
      terraform init -backend=false -plugin-dir="$TF_PLUGIN_DIR" -input=false -no-color >"$TMP/init.log" 2>&1 \
        || { cat "$TMP/init.log" >&2; echo "FAIL terraform init" >&2; exit 1; }
      terraform validate -no-color

      # terraform test with a mocked provider (mock_provider needs Terraform >= 1.7): evaluates every
      # expression as an apply would, for the default and the VPC variables, without AWS access.
      version="$(terraform version -json | sed -n 's/.*"terraform_version": *"\([0-9.]*\).*/\1/p')"
      if [[ "$(printf '%s\n1.7.0\n' "$version" | sort -V | head -n1)" == "1.7.0" ]]; then
        echo "== terraform test (mocked provider)"
        terraform test -no-color
      else
        echo "SKIP terraform test: Terraform $version < 1.7 (no mock_provider)"
      fi
    )
  else
    echo "SKIP terraform validate: no $TF_PLUGIN_DIR mirror"
  fi
else
  echo "SKIP terraform fmt/validate: terraform not on PATH"
fi

# --- 3: checkov ------------------------------------------------------------------------------------
if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]]; then
  echo "== creating $CHECKOV_VENV with checkov==$CHECKOV_VERSION (own venv: it pins its own boto3 / hcl2)"
  "$PYTHON" -m venv "$CHECKOV_VENV"
  if ! "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "checkov==$CHECKOV_VERSION" >"$TMP/pip.log" 2>&1; then
    tail -n 40 "$TMP/pip.log" >&2
    rm -rf "$CHECKOV_VENV"
    echo "FAIL: could not install checkov==$CHECKOV_VERSION into $CHECKOV_VENV" >&2
    exit 1
  fi
fi

echo "== checkov --framework terraform -d infra/terraform"
# checkov exits 0 on parsing errors (they only show in summary.parsing_errors): gate on the JSON.
set +e
"$CHECKOV_VENV/bin/checkov" --skip-download --framework terraform --skip-path .terraform \
  -o json -d "$HERE" >"$TMP/checkov.json" 2>"$TMP/checkov.err"
rc=$?
set -e

"$CHECKOV_VENV/bin/python" - "$TMP/checkov.json" "$rc" "$TMP/checkov.err" <<'PY'
import json
import sys

path, rc, err = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    data = json.load(open(path))
except ValueError:
    sys.stderr.write(open(err).read()[-4000:])
    sys.exit(f"FAIL checkov: no JSON report (exit code {rc})")
reports = data if isinstance(data, list) else [data]
summary = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
failed, skipped = [], []
for rep in reports:
    for key in summary:
        summary[key] += int(rep.get("summary", {}).get(key, 0))
    results = rep.get("results", {})
    failed += results.get("failed_checks", [])
    skipped += results.get("skipped_checks", [])

for c in skipped:
    print(f"  waived {c['check_id']} on {c['resource']}: {c.get('check_result', {}).get('suppress_comment', '')}")
for c in failed:
    print(f"  FAILED {c['check_id']} on {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): "
          f"{c['check_name']}")
print("checkov summary: passed={passed} failed={failed} skipped={skipped} "
      "parsing_errors={parsing_errors} resources={resource_count}".format(**summary))
if summary["resource_count"] == 0:
    sys.exit("FAIL checkov: no resources scanned")
if summary["parsing_errors"]:
    sys.exit("FAIL checkov: parsing errors")
if summary["failed"] or failed:
    sys.exit("FAIL checkov: failed checks")
print("OK checkov")
PY
echo "OK infra/terraform checks passed"
