import pytest

from core.i18n import gettext_for, normalise_lang


@pytest.mark.parametrize(("given", "lang"), [
    (None, "en"), ("en", "en"), ("en-GB", "en"), ("zh", "zh-CN"), ("zh_CN", "zh-CN"),
    ("zh-Hans-CN", "zh-CN"), ("ZH-cn", "zh-CN"),
])
def test_languages(given, lang):
    assert normalise_lang(given) == lang


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="unsupported"):
        normalise_lang("fr")


def test_untranslated_falls_back_to_english():
    assert gettext_for("zh-CN", "no-such-domain")("Site") == "Site"
    assert gettext_for("en", "reports")("Site") == "Site"
