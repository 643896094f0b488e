"""Language names, and the one-time request to answer in the user's language."""

from __future__ import annotations

__all__ = ["correction_prompt", "language_codes", "language_name"]

_NAMES = {
    "en": ("English", "Please answer in English."),
    "zh": ("Chinese", "请用中文回答。"),
    "ja": ("Japanese", "日本語で答えてください。"),
    "ko": ("Korean", "한국어로 답변해 주세요."),
    "ru": ("Russian", "Пожалуйста, отвечайте на русском языке."),
    "fr": ("French", "Veuillez répondre en français."),
    "de": ("German", "Bitte antworte auf Deutsch."),
    "es": ("Spanish", "Por favor, responde en español."),
    "it": ("Italian", "Per favore, rispondi in italiano."),
    "pt": ("Portuguese", "Por favor, responda em português."),
    "nl": ("Dutch", "Antwoord alstublieft in het Nederlands."),
    "pl": ("Polish", "Proszę odpowiedzieć po polsku."),
    "tr": ("Turkish", "Lütfen Türkçe cevap verin."),
    "vi": ("Vietnamese", "Vui lòng trả lời bằng tiếng Việt."),
    "id": ("Indonesian", "Tolong jawab dalam bahasa Indonesia."),
    "sv": ("Swedish", "Svara på svenska, tack."),
    "da": ("Danish", "Svar venligst på dansk."),
    "ro": ("Romanian", "Vă rog să răspundeți în limba română."),
    "cs": ("Czech", "Odpovězte prosím česky."),
    "hu": ("Hungarian", "Kérem, válaszoljon magyarul."),
    "fi": ("Finnish", "Vastaa suomeksi, kiitos."),
    "ar": ("Arabic", "من فضلك أجب باللغة العربية."),
    "hi": ("Hindi", "कृपया हिंदी में उत्तर दें।"),
    "el": ("Greek", "Παρακαλώ απάντησε στα ελληνικά."),
    "he": ("Hebrew", "אנא ענה בעברית."),
    "th": ("Thai", "กรุณาตอบเป็นภาษาไทย"),
}


def language_codes() -> dict[str, str]:
    """Every language code the checks name, with its English name."""
    return {code: name for code, (name, _) in _NAMES.items()}


def language_name(lang: str) -> str:
    """The English name of a language code (the code itself when unknown)."""
    return _NAMES[lang][0] if lang in _NAMES else lang


def correction_prompt(user_lang: str) -> str:
    """The one-time request to answer in the user's language, in English and in that language."""
    if user_lang not in _NAMES:
        return "Please answer in the same language as my question."
    name, native = _NAMES[user_lang]
    english = f"Please answer in {name}."
    return english if native == english else f"{english} {native}"
