#!/bin/sh
# The secrets compose.yaml mounts (its `secrets:` section), written once as random values into
# images/compose/secrets/ (ignored by git, kept out of the build context). Existing files are
# kept: delete one to make it again.
#
#   images/compose/secrets.sh
#
# The folder is readable by its owner only; the files are mode 0644 so that the containers'
# non-root users (10001, Grafana's 472, Alertmanager's nobody) can read their bind mounts.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"

random() { python3 -c "import secrets; print(secrets.token_urlsafe($1))"; }
write() {  # name value
    if [ -s "$dir/$1" ]; then echo "secrets: $1 kept"; return; fi
    umask 022
    printf '%s\n' "$2" >"$dir/$1"
    chmod 0644 "$dir/$1"
    echo "secrets: $1 written"
}

write aws_access_key_id "recsys-$(random 12)"
write aws_secret_access_key "$(random 30)"
write api_keys "$(random 24)"
write webhook_token "$(random 24)"
write grafana_admin_password "$(random 18)"
# SeaweedFS' identities (-s3.config): the one access key of the lake, from the files above
if [ ! -s "$dir/s3_config.json" ]; then
    python3 - "$dir" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
key, secret = ((d / n).read_text().strip() for n in ("aws_access_key_id", "aws_secret_access_key"))
identity = {"name": "recsys", "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
(d / "s3_config.json").write_text(json.dumps({"identities": [identity]}, indent=2) + "\n")
PY
    chmod 0644 "$dir/s3_config.json"
    echo "secrets: s3_config.json written"
else
    echo "secrets: s3_config.json kept"
fi
