#!/bin/sh
# Fills infra/'s templates with the values of infra/settings.env, into infra/rendered/:
#
#   infra/render.sh kuberay|aws [SETTINGS_FILE [OUT_DIR]]
#
# The templates hold ${NAME} for what only you know (settings.env.example lists each name and
# its form). Nothing is written, and the exit code is 2, while a value that a template needs
# is empty or malformed: each such name is printed. The settings file is read as NAME=VALUE
# lines, never run as shell code. envsubst replaces only the listed names, so a $VARIABLE
# that belongs to Ray or the shell (the launcher's $RAY_HEAD_IP) stays as it is.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target=${1:-}
settings=${2:-$here/settings.env}
out=${3:-$here/rendered}

case "$target" in
  kuberay) templates="kuberay/storage.yaml kuberay/mlflow.yaml kuberay/raycluster.yaml kuberay/rayjob.yaml" ;;
  aws) templates="ray-cluster-aws.yaml" ;;
  *) echo "usage: infra/render.sh kuberay|aws [SETTINGS_FILE [OUT_DIR]]" >&2; exit 2 ;;
esac
if ! command -v envsubst > /dev/null; then
  echo "infra/render.sh: envsubst not found (Debian/Ubuntu: apt-get install gettext-base; macOS: brew install gettext)" >&2
  exit 2
fi
if [ ! -f "$settings" ]; then
  echo "infra/render.sh: no $settings: cp infra/settings.env.example infra/settings.env, then fill it in" >&2
  exit 2
fi

# name, then the form its value must have (POSIX ERE, the whole value).
FORMS='
CKPTLAB_IMAGE [a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
RWX_STORAGE_CLASS [a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*
AWS_AMI_ID ami-[0-9a-f]{8}([0-9a-f]{9})?
EFS_FILE_SYSTEM_ID fs-[0-9a-f]{8}([0-9a-f]{9})?
'
names=$(printf '%s\n' "$FORMS" | awk 'NF { print $1 }')

# The settings file's values (the last NAME=VALUE line of each name, a trailing CR dropped),
# never what the calling shell happens to export.
value_of() {
  sed -n "s/^$1=//p" "$settings" | tr -d '\r' | tail -n 1
}

problems=""
used=""
for name in $names; do
  unset "$name"
  needed=no
  for template in $templates; do
    if grep -q "\${$name}" "$here/$template"; then needed=yes; fi
  done
  [ "$needed" = yes ] || continue
  used="$used \${$name}"
  value=$(value_of "$name")
  form=$(printf '%s\n' "$FORMS" | awk -v n="$name" '$1 == n { print $2 }')
  if [ -z "$value" ]; then
    problems="$problems
  $name is empty"
  elif ! printf '%s\n' "$value" | grep -Eqx "$form"; then
    problems="$problems
  $name=$value is not of the form $form"
  elif [ "$name" = RWX_STORAGE_CLASS ] && [ ${#value} -gt 253 ]; then
    problems="$problems
  $name is longer than 253 characters"
  else
    export "$name=$value"
  fi
done
if [ -n "$problems" ]; then
  echo "infra/render.sh: fill in $settings (see infra/settings.env.example):$problems" >&2
  exit 2
fi

# Each file whole or not at all: written beside its place, then moved there.
for template in $templates; do
  mkdir -p "$out/$(dirname "$template")"
  envsubst "$used" < "$here/$template" > "$out/$template.partial"
  mv "$out/$template.partial" "$out/$template"
  echo "wrote $out/$template"
done
