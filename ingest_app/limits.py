"""The read side's limits, below the schemas that document them and the code that applies them."""

from __future__ import annotations

# GET /results: a page holds DEFAULT_LIMIT results unless `limit` asks for 1 to MAX_LIMIT.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# The longest provider or model_name a filter of GET /results takes.
MAX_FILTER_CHARS = 256
# GET /summary and the status page summarise this window unless `window` names another.
DEFAULT_WINDOW = "24h"
