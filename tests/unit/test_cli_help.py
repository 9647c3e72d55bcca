"""The CLI's commands are the README's: every command (and checkpoint subcommand) of ``erlmcp-ray``
is documented there, and every read command takes --json (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from erlmcp_ray.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_command_is_in_the_readme_and_has_help():
    for name in main.commands:
        assert f"erlmcp-ray {name}" in README, name
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0, name
    for sub in main.commands["checkpoint"].commands:
        assert sub in README.split("erlmcp-ray checkpoint", 1)[1].split("\n", 1)[0], sub


def test_read_commands_take_json():
    for name in ("status", "get", "keys", "verify", "bench", "start", "recover"):
        assert "--json" in CliRunner().invoke(main, [name, "--help"]).output, name
    assert "--json" in CliRunner().invoke(main, ["checkpoint", "list", "--help"]).output


def test_usage_errors_exit_2_in_one_line():
    result = CliRunner().invoke(main, ["get", "only-a-domain"])
    assert result.exit_code == 2 and "Missing argument" in result.output
