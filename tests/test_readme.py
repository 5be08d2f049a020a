"""README.md and .ci/run agree: CI runs exactly the README's test command."""

from __future__ import annotations

from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = _commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert len(readme) == 2, f"README.md must have exactly two set-up commands, found {readme}"
    assert "hf-seqobj train configs/quickstart.yaml" in readme[0]
    assert ci == [readme[1]], "the test command in .ci/run differs from README.md's"
    assert "pytest" in readme[1]


def test_the_main_job_shows_the_progress_bar():
    """The README promises the Trainer's progress bar (not log dictionaries printed every few steps) for each run."""
    from hf_seqobj.cli import expand_compare, load_yaml_config, parse_settings

    path = ROOT / "configs" / "quickstart.yaml"
    for name, config in expand_compare(load_yaml_config(path), str(path)).items():
        checked = {key: value for key, value in config.items() if key != "start_from"}
        training_args = parse_settings(checked, [], str(path))[2]
        assert not training_args.disable_tqdm, f"run {name!r} of the main job hides the progress bar"
        assert training_args.logging_steps >= training_args.max_steps / 4, f"run {name!r} logs too often"


def test_readme_is_short_and_has_its_sections():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 10_500, f"README.md has {len(text)} characters; keep it to about 10k"
    for section in ("## Install and run the main job", "## Drop-in use", "## Objectives", "## Errors and recovery"):
        assert section in text, f"README.md lacks {section!r}"
    ways_on = ("--resume_from_checkpoint latest", "--overwrite_output_dir true", "skip_invalid_examples", "--debug")
    for way_on in ways_on:
        assert way_on in text, f"README.md's errors section does not mention {way_on}"
    assert "../shared" not in text  # the repository stands on its own (test_docs checks the spec is not cited)
