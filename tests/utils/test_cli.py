"""The scripts' ``--set KEY=VALUE`` parsing."""

import pytest

from bundle.utils.cli import parse_overrides


def test_parse_overrides_reads_json_values_and_keeps_strings():
    parsed = parse_overrides(
        [
            "overlap=0.5",
            "roi_size=[16, 16, 16]",
            "teacher#checkpoint=null",
            "resume=true",
            "teacher#loss=dice",
            "name=a=b",
            "val=False",
            "path=/data/x.nii.gz",
        ]
    )
    assert parsed == {
        "overlap": 0.5,
        "roi_size": [16, 16, 16],
        "teacher#checkpoint": None,
        "resume": True,
        "teacher#loss": "dice",
        "name": "a=b",
        "val": False,
        "path": "/data/x.nii.gz",
    }
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["overlap", "=1"])
def test_parse_overrides_names_a_malformed_item(item):
    with pytest.raises(ValueError, match=f"--set '{item}': expected KEY=VALUE"):
        parse_overrides([item])


def test_bundle_override_args_are_python_literals_that_the_bundle_command_line_reads_back():
    import ast
    from pathlib import Path

    from bundle.utils.cli import bundle_override_args

    settings = {
        "save_predictions": False,
        "ckpt_path": None,
        "roi_size": [16, 16, 16],
        "name": "a b",
        "dir": Path("/x"),
    }
    args = bundle_override_args(settings)
    assert args[::2] == ["--save_predictions", "--ckpt_path", "--roi_size", "--name", "--dir"]
    assert args[1::2] == ["False", "None", "[16, 16, 16]", "a b", "/x"]
    assert [ast.literal_eval(a) for a in args[1:6:2]] == [False, None, [16, 16, 16]]
