"""`ru` for people: help text on every argument, settings inline or from a file, `--version`, the job log's
first line reruns the job, logging configured from -v/-q."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from robust_unlearning import __version__
from robust_unlearning.cli.main import build_parser, command_line

RU = str(Path(sys.executable).parent / "ru")
ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "RU_PLUGINS"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def test_every_argument_of_every_subcommand_has_help_text():
    subs = _subparsers(build_parser())
    assert {"validate-config", "prepare-data", "cache-model", "train-probe", "unlearn", "attack", "evaluate",
            "aggregate", "landscape"} <= set(subs)
    missing = [f"{name} {a.option_strings or a.dest}" for name, s in subs.items() for a in s._actions
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, missing


def test_version():
    res = subprocess.run([RU, "--version"], capture_output=True, text=True, timeout=60, env=_env())
    assert res.returncode == 0 and res.stdout.strip() == f"ru (robust-unlearning) {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(__version__)}"$', pyproject, re.M)   # one version, not two


UNLEARN = ["unlearn", "--method", "npo", "--benchmark", '{"forget_source": "raw"}', "--data", "d",
           "--model-dir", "m", "--seed", "3", "--out", "o", "--checkpoint-dir", "c"]


def test_settings_inline_or_from_a_yaml_or_json_file(tmp_path):
    settings = {"lr": 1e-05, "beta": 0.1, "lambda_r": [1, 2]}
    (tmp_path / "s.yaml").write_text("lr: 1.0e-5\nbeta: 0.1\nlambda_r:\n  - 1\n  - 2\n")
    (tmp_path / "s.json").write_text(json.dumps(settings))
    parse = build_parser().parse_args
    inline = parse([*UNLEARN, "--settings", json.dumps(settings), "--train", '{"steps": 2}'])
    from_yaml = parse([*UNLEARN, "--settings", str(tmp_path / "s.yaml"), "--train", '{"steps": 2}'])
    from_json = parse([*UNLEARN, "--settings", str(tmp_path / "s.json"), "--train", '{"steps": 2}'])
    assert inline.settings == from_yaml.settings == from_json.settings == settings
    assert inline.train == {"steps": 2} and inline.benchmark == {"forget_source": "raw"}


@pytest.mark.parametrize("value,expected", [
    ("{lr: 1", "neither inline JSON"),           # a typo in inline JSON: says what it is not
    ("missing.yaml", "nor an existing settings file: 'missing.yaml'"),
])
def test_a_bad_settings_argument_is_refused_by_name(value, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*UNLEARN, "--settings", value, "--train", "{}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --settings" in err and expected in err


def test_a_malformed_settings_file_names_file_and_line(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("lr: 1\nbeta: [0.1\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args([*UNLEARN, "--settings", str(tmp_path / "s.yaml"), "--train", "{}"])
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.yaml'}: malformed YAML at line" in err


def test_global_options_before_or_after_the_subcommand():
    parse = build_parser().parse_args
    a = parse(["-v", "--plugin", "p1", "validate-config", "c.yaml"])
    b = parse(["validate-config", "c.yaml", "-v", "--plugin", "p1"])
    c = parse(["validate-config", "c.yaml"])
    assert (a.verbose, a.plugin) == (b.verbose, b.plugin) == (1, ["p1"])
    assert (c.verbose, c.quiet, c.plugin, c.trust_remote_code) == (0, 0, [], False)


def test_the_job_log_starts_with_the_command_that_reruns_it(tmp_path):
    """As a rule runs it (`ru ... > {log} 2>&1`): a failing job; its first log line, pasted into a shell in the
    directory of the second line, fails the same way."""
    settings = '{"lr": 1e-3, "note": "it\'s quoted"}'
    argv = [*UNLEARN, "--settings", settings, "--train", '{"steps": 2}', "--threads", "1"]
    work = tmp_path / "work dir"
    work.mkdir()
    log = tmp_path / "job.log"
    cmd = f"{shlex.quote(RU)} {shlex.join(argv)} > {shlex.quote(str(log))} 2>&1"
    res = subprocess.run(["bash", "-c", cmd], cwd=work, env=_env(), timeout=300)
    assert res.returncode == 1
    lines = log.read_text().splitlines()
    assert lines[0] == "# command: " + shlex.join(["ru", *argv])
    assert lines[1] == f"# cwd: {shlex.quote(str(work))}"
    assert lines[-1].startswith("ru unlearn: error: ") and "m" in lines[-1]
    # rerun by copying the line (ru found on PATH, as in a job)
    rerun = subprocess.run(["bash", "-c", f"cd {lines[1][len('# cwd: '):]} && {lines[0][len('# command: '):]}"],
                           env=_env(PATH=f"{Path(RU).parent}:{os.environ['PATH']}"), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 1 and rerun.stderr.strip().splitlines()[-1] == lines[-1]


def test_the_header_names_plugins_from_the_environment():
    assert command_line(["unlearn", "--method", "x y"], ["a.py", "b"]) == \
        "ru --plugin a.py --plugin b unlearn --method 'x y'"
    assert command_line(["--plugin", "a.py", "unlearn"], ["a.py"]) == "ru --plugin a.py unlearn"


_LOG_SNIPPET = """
import logging, sys
from robust_unlearning.cli.main import configure_logging
configure_logging(int(sys.argv[1]), int(sys.argv[2]))
logging.getLogger("robust_unlearning.metrics.evaluate").info("metric forget_mcq_acc: 40 items in 1.5s")
logging.getLogger("robust_unlearning.metrics.evaluate").debug("debug detail")
logging.getLogger("robust_unlearning.report").warning("a warning")
logging.getLogger("transformers.x").info("third-party chatter")
"""


@pytest.mark.parametrize("verbose,quiet,shown,hidden", [
    (0, 0, ["metric forget_mcq_acc: 40 items in 1.5s", "a warning"], ["debug detail", "third-party chatter"]),
    (1, 0, ["metric forget_mcq_acc", "debug detail", "a warning"], ["third-party chatter"]),
    (2, 0, ["metric forget_mcq_acc", "debug detail", "third-party chatter"], []),
    (0, 1, ["a warning"], ["metric forget_mcq_acc", "debug detail"]),
])
def test_logging_level_from_verbose_and_quiet(verbose, quiet, shown, hidden):
    res = subprocess.run([sys.executable, "-c", _LOG_SNIPPET, str(verbose), str(quiet)], capture_output=True,
                         text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stderr
    for s in shown:
        assert s in res.stderr
    for s in hidden:
        assert s not in res.stderr
    assert "INFO robust_unlearning.metrics.evaluate: metric" in res.stderr or quiet


def test_cli_modules_import_no_heavy_library():
    """`ru --help` and the argument parsing stay fast: cli/ imports torch & co. only inside the commands."""
    code = ("import sys; import robust_unlearning.cli.main as m; m.build_parser(); import robust_unlearning.cli."
            "commands; print(sorted(k for k in ('torch', 'transformers', 'lm_eval', 'matplotlib', 'peft') "
            "if k in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _shell_commands(smk: Path) -> list[tuple[str, str]]:
    """(rule, shell command) of every rule in a .smk file: the string literals under ``shell:`` joined."""
    out, rule, in_shell, parts = [], None, False, []
    for line in smk.read_text().splitlines() + ["rule _end:"]:
        m = re.match(r"(?:rule|checkpoint) (\w+):", line)
        if m or (in_shell and line.strip() and not line.strip().startswith('"')):
            if in_shell:
                out.append((rule, "".join(parts)))
            in_shell, parts = False, []
            rule = m.group(1) if m else rule
        elif line.strip() == "shell:":
            in_shell = True
        elif in_shell and line.strip().startswith('"'):
            parts.append(json.loads(line.strip()))
    return out


def test_every_rule_is_one_ru_command_whose_output_is_its_log():
    """So that the '# command: ru ...' header ru writes first is the first line of every job log."""
    commands = [(smk.name, rule, cmd) for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk"))
                for rule, cmd in _shell_commands(smk)]
    assert len(commands) >= 10
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):          # no rule without a shell command
        assert sorted(re.findall(r"^rule (\w+):", smk.read_text(), re.M)) == \
            sorted(r for r, _ in _shell_commands(smk)), smk.name
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r'^RU = "ru --trust-remote-code" if .* else "ru"$', common, re.M)
    for name, rule, cmd in commands:
        assert re.match(r"(ru|\{params\.ru\}) [a-z-]+ ", cmd), (name, rule, cmd)
        assert "> {log:q} 2>&1" in cmd and cmd.count(" ru ") == 0 and ";" not in cmd, (name, rule, cmd)
