import json

import pytest

from herd.errors import ToolError
from herd.tools import default_docs, make_tools
from herd.tools.builtin import convert_units, date_diff, http_status, word_count


def test_custom_tools_compute_the_right_values() -> None:
    assert json.loads(convert_units(100, "C", "F")) == {"result": 212.0, "unit": "F"}
    assert json.loads(convert_units(1, "mi", "km")) == {"result": 1.60934, "unit": "km"}
    assert json.loads(date_diff("2024-02-28", "2024-03-01")) == {"days": 2}
    assert json.loads(http_status(404))["phrase"] == "Not Found"
    assert json.loads(word_count("two words")) == {"words": 2, "characters": 9}
    with pytest.raises(ToolError, match="absolute zero"):
        convert_units(-300, "C", "K")
    with pytest.raises(ToolError, match="code=999"):
        http_status(999)


def test_search_is_named_per_format() -> None:
    docs = [{"title": "Petra", "text": "A historic city in southern Jordan."}]
    common = {"convert_units", "date_diff", "http_status", "word_count", "code_interpreter"}
    assert set(make_tools(fmt="json", docs=docs)) == common | {"search"}
    assert set(make_tools(fmt="llama3", docs=docs)) == common | {"brave_search"}
    with pytest.raises(ValueError, match="fmt='xml'"):
        make_tools(fmt="xml", docs=docs)


def test_default_docs_come_from_the_installed_stdlib() -> None:
    docs = default_docs()
    assert len(docs) >= 50
    assert all(doc["title"] and doc["text"] for doc in docs)
    assert "json" in {doc["title"] for doc in docs}
