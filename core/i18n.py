"""Languages for people: English (the source strings) and simplified Chinese.

Catalogs are gettext ``.po`` files under ``core/locale/<locale>/LC_MESSAGES/``,
one per domain (``reports`` for report headers and labels, ``web`` for the web
app's pages), read with Babel at first use; no compile step, so an edited
catalog takes effect on the next start.  A string with no translation falls back
to English, never to an empty cell.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from babel.messages.pofile import read_po

__all__ = ["DEFAULT_LANG", "LANGS", "catalog", "gettext_for", "normalise_lang"]

LOCALE_DIR = Path(__file__).with_name("locale")
LANGS = ("en", "zh-CN")
DEFAULT_LANG = "en"
_LOCALES = {"en": None, "zh-CN": "zh_CN"}


def normalise_lang(value: str | None) -> str:
    """``zh``, ``zh_CN``, ``zh-Hans-CN``... -> ``zh-CN``; ``en-GB`` -> ``en``; refuses others."""
    if not value:
        return DEFAULT_LANG
    low = value.strip().replace("_", "-").lower()
    if low == "zh" or low.startswith(("zh-cn", "zh-hans", "zh-sg")):
        return "zh-CN"
    if low == "en" or low.startswith("en-"):
        return "en"
    raise ValueError(f"unsupported language {value!r} (use one of: {', '.join(LANGS)})")


@lru_cache(maxsize=16)
def catalog(lang: str, domain: str) -> dict[str, str]:
    """``msgid -> msgstr`` of one domain in one language (empty for English)."""
    locale = _LOCALES[normalise_lang(lang)]
    if locale is None:
        return {}
    path = LOCALE_DIR / locale / "LC_MESSAGES" / f"{domain}.po"
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        po = read_po(fh, locale=locale)
    return {str(m.id): str(m.string) for m in po if m.id and isinstance(m.id, str) and m.string}


def gettext_for(lang: str, domain: str) -> Callable[[str], str]:
    """A ``gettext`` for ``lang``: the translation, or the English source if there is none."""
    table = catalog(normalise_lang(lang), domain)
    return lambda message: table.get(message, message)
