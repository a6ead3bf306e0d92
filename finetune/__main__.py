"""`python -m finetune --help`"""

from finetune.cli import entry

entry()
