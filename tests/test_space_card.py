"""The repository root is the Space: README.md's front matter is a valid Space card.

    python -m pytest tests/test_space_card.py -q
"""

from __future__ import annotations

from conftest import REPO


def _card():
    from huggingface_hub import SpaceCard

    return SpaceCard((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_root_readme_is_a_space_card_whose_app_file_exists():
    from huggingface_hub import SpaceCardData

    data = _card().data
    assert isinstance(data, SpaceCardData)
    assert data.sdk == "gradio" and data.app_file == "app.py"
    assert (REPO / data.app_file).is_file()
    assert data.hf_oauth is True  # visitors and the owner sign in with gr.LoginButton
    assert data.suggested_hardware
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert data.sdk_version == pins["gradio"]  # the Space runs the Gradio the app is pinned to
    assert len(data.short_description) <= 60  # the Hub refuses longer ones


def test_the_readme_people_read_starts_with_the_two_setup_commands():
    text = _card().text.lstrip()
    assert text.startswith("# ")
    blocks = text.split("```bash\n")
    assert blocks[1].startswith("bash scripts/start.sh") and blocks[2].startswith(
        "bash scripts/test.sh")
    assert "## Duplicate this Space" in text and "HF_TOKEN" in text


def test_the_chat_space_template_is_a_space_card_too():
    from huggingface_hub import SpaceCard

    from finetune import hub

    files = hub.chat_space_files("ana/my-model", title="My model")
    card = SpaceCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == ["ana/my-model"] and card.data.title == "My model"
    assert "app.py" in files and "import finetune" not in files["app.py"].decode()
    # A top-level `spaces/` folder would be what `import spaces` finds on a Space without the
    # PyPI package, and Gradio then fails to start (seen in tests/test_public_link.py).
    assert not (REPO / "spaces").exists()
