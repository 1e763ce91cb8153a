"""Issue #15 item 4: the Docker image is built and run in CI with Podman (scripts/container_check.sh,
started by scripts/test.sh). The build and the run are the check itself (they take minutes and need
root, so they are not a pytest test); these are the static contracts that keep it buildable unchanged."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
CHECK = REPO / "scripts" / "container_check.sh"
TEST_SH = (REPO / "scripts" / "test.sh").read_text()


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=?(.*)$", DOCKERFILE, flags=re.M))


def test_every_build_arg_the_check_passes_exists_in_the_dockerfile():
    passed = set(re.findall(r"--build-arg (\w+)=", CHECK.read_text()))
    assert passed == {"RAY_IMAGE", "AISTUDIO_EXTRAS", "NVIDIA_INDEX_URL", "AISTUDIO_FETCH_WEIGHTS"}, passed
    assert passed <= set(_args()), passed - set(_args())


def test_nvidia_index_and_weights_are_conditional_on_their_build_args():
    assert 'if [ -n "${NVIDIA_INDEX_URL}" ]; then export PIP_EXTRA_INDEX_URL="${NVIDIA_INDEX_URL}"; fi' in DOCKERFILE
    assert re.search(r'if \[ "\$\{AISTUDIO_FETCH_WEIGHTS\}" = 1 \]; then aistudio fetch-weights', DOCKERFILE)
    # No unconditional index or download left behind.
    assert "PIP_EXTRA_INDEX_URL=https://" not in DOCKERFILE


def test_passwordless_sudo_is_removed_while_still_root():
    root_part, _, user_part = DOCKERFILE.partition("USER 1000:100")
    assert "NOPASSWD/d" in root_part and "/etc/sudoers /etc/sudoers.d/*" in root_part
    assert "gpasswd -d ray sudo" in root_part
    assert "sudo" not in re.sub(r"#.*", "", user_part)


def test_the_test_command_builds_and_runs_the_image_beside_the_suite_by_default():
    """CI's run (the test command without arguments) includes the image check: build and run start in the
    background before the suite, and the test command waits for them after it."""
    start = TEST_SH.index("container_check.sh all")
    suite = TEST_SH.index("-m pytest")
    wait = TEST_SH.rindex('wait "$container_pid"')
    assert start < suite < wait
    assert re.search(r"container_check\.sh all .*&\n", TEST_SH)
    assert "default_check=0; [ $# -eq 0 ] && default_check=1" in TEST_SH
    assert "container_check=${AISTUDIO_CONTAINER_CHECK:-$default_check}" in TEST_SH
    # A failed check fails the test command.
    assert 'wait "$container_pid" || container=$?' in TEST_SH and 'exit "$container"' in TEST_SH


def test_scripts_parse():
    for script in (CHECK, REPO / "scripts" / "test.sh"):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_skip_reports_its_reason(tmp_path):
    """Below the free-disk floor the check says SKIPPED with the reason and exits 0 (never a silent pass)."""
    env = {"PATH": "/usr/bin:/bin", "AISTUDIO_CONTAINER_STATE": str(tmp_path / "state"),
           "AISTUDIO_CONTAINER_MIN_FREE_GB": "100000000"}
    proc = subprocess.run(["bash", str(CHECK), "build"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"container check: SKIPPED \(only \d+ GB free disk; the image build needs 100000000 GB", proc.stdout)
    run = subprocess.run(["bash", str(CHECK), "run"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and "SKIPPED (only" in run.stdout, run.stdout + run.stderr
    both = subprocess.run(["bash", str(CHECK), "all"], capture_output=True, text=True, env=env, timeout=60)
    assert both.returncode == 0 and "container check: SKIPPED (only" in both.stdout, both.stdout + both.stderr


def test_build_mode_leaves_the_image_for_run():
    """`build` ends before the final PASSED line, so `run` still finds BUILT (found by running the
    test command: the background build overwrote BUILT with PASSED and `run` refused)."""
    text = CHECK.read_text()
    branch = re.search(r"\n  build\)\n(.*?);;", text, flags=re.S).group(1)
    assert branch.rstrip().endswith("exit 0"), branch
    assert 'echo "BUILT" > "$state/result"' in text
