"""A template's language as Meta names it (``en_US``), or a clear refusal before anything is sent.

Before: ``language = "en-US"`` (the form of Meta's webhook reference and of most locale settings) loaded;
every message of the step then failed at Meta (132001: no such template in that language) and
``templates check`` called the approved template "missing; submit it".
"""

from __future__ import annotations

import pytest

from tests.test_config_and_cli_errors import EXAMPLE, EXAMPLE_ENV, _example_with, app, runner


@pytest.mark.parametrize(("written", "expected"), [
    ("en-US", "'en-US' is not how Meta names a template language: write en_US"),
    ("pt-br", "'pt-br' is not how Meta names a template language: write pt_BR"),
    ("en_us", "'en_us' is not how Meta names a template language: write en_US"),
    ("English", "'English' is not a WhatsApp template language code (like en, en_US, pt_BR, fil)"),
])
def test_check_config_names_the_language_meta_would_recognise(tmp_path, monkeypatch, written, expected):
    problems = _example_with(tmp_path, monkeypatch, 'language = "en"', f'language = "{written}"')
    assert any(p.endswith(f".language: {expected}") and p.startswith("stores[0].templates[") for p in problems), problems


@pytest.mark.parametrize("code", ["en", "hi", "en_US", "pt_BR", "zh_CN", "fil"])
def test_meta_s_own_codes_load(tmp_path, monkeypatch, code):
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "storeloop.toml"
    path.write_text(EXAMPLE.read_text().replace('language = "en"', f'language = "{code}"'))
    assert f'language = "{code}"' in path.read_text()
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    assert result.exit_code == 0, result.output
