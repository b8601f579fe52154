from capmill.prompts.safety import delimited, safe_alt_text, safe_text, untrusted
from capmill.prompts.templates import PromptTemplate, builtin_names, load_template

__all__ = ["PromptTemplate", "builtin_names", "delimited", "load_template", "safe_alt_text", "safe_text", "untrusted"]
