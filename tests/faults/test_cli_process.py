"""One user error per command in a real process: exit code 2, the message on stderr, and no
traceback (what a shell user sees; the in-process tests cover the many cases)."""

import pytest
from fault_utils import TINY_TRAIN, run_subprocess


@pytest.mark.parametrize(
    "command, fragment",
    [
        (lambda t: ["train", "--data", t / "nope", "--output", t / "run", *TINY_TRAIN], "nope"),
        (lambda t: ["align", t, t / "file" / "dst"], "file"),
        (lambda t: ["evaluate", "--pairs", t / "file", "--images", t, "--model", t / "m.keras"],
         "file"),
        (lambda t: ["export", "--model", t / "file", "--output", t / "out"], "file"),
        (lambda t: ["demo", "--output", t / "file"], "file"),
    ],
    ids=["train", "align", "evaluate", "export", "demo"],
)  # fmt: skip
def test_user_error_in_a_real_process(tmp_path, command, fragment):
    (tmp_path / "file").write_text("not what the command expects\n")
    result = run_subprocess(*command(tmp_path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "Error:" in result.stderr and fragment in result.stderr, result.stderr
    assert (tmp_path / "file").read_text() == "not what the command expects\n"
