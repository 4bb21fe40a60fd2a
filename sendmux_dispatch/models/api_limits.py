"""The API's documented limits and syntax rules, in one place.

The client and the sandbox both read these. Where the product docs and the
vendor's OpenAPI spec disagree (see docs/design.md), both numbers are here and
the name says whose they are.
"""

from __future__ import annotations

from typing import Final

#: Messages in one POST /emails/send/batch.
MAX_BATCH_MESSAGES: Final = 100
#: Request body, in bytes. The product page says 25 MB "per body"; the spec's
#: 413 says "request body", so we hold every request to it.
MAX_REQUEST_BYTES: Final = 25 * 1024 * 1024
MAX_SUBJECT_CHARS: Final = 998
MAX_ADDRESS_CHARS: Final = 254
MAX_NAME_CHARS: Final = 100
MAX_ATTACHMENTS: Final = 10
MAX_FILENAME_CHARS: Final = 255
MAX_HEADER_VALUE_CHARS: Final = 500
#: cc and bcc, each, as the product docs state (the client enforces these).
DOCS_MAX_CC: Final = 100
DOCS_MAX_BCC: Final = 100
#: The OpenAPI spec's stricter reading (the sandbox enforces these, as the server would).
SPEC_MAX_CC: Final = 49
SPEC_MAX_BCC: Final = 49
SPEC_MAX_RECIPIENTS: Final = 50
MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 60 * 60
SENDING_REQUESTS_PER_WINDOW: Final = 1800
MANAGEMENT_REQUESTS_PER_WINDOW: Final = 600
RATE_WINDOW_SECONDS: Final = 60.0

# The patterns below are written for pydantic-core's Rust regex engine, where
# ``$`` is the end of the text. Python's ``re`` lets ``$`` match before a
# trailing newline, so match them in Python with ``re.fullmatch`` (or add a
# separate CR/LF check), never ``re.match``.

#: WHATWG's "valid e-mail address" grammar, but with at least one dot in the
#: domain: the API delivers to the internet, not to intranet hosts.
EMAIL_PATTERN: Final = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
#: Subject, display names and header values: a CR or LF would let a value
#: start a new header (header injection), so none may contain one.
NO_LINE_BREAKS_PATTERN: Final = r"^[^\r\n]*$"
#: Custom headers must be X- headers with a token name.
CUSTOM_HEADER_NAME_PATTERN: Final = r"^[Xx]-[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
IDEMPOTENCY_KEY_PATTERN: Final = r"^[A-Za-z0-9_-]{1,255}$"
ATTACHMENT_ID_PATTERN: Final = r"^att_[a-z0-9]{24}$"
DELIVERY_GROUP_PATTERN: Final = r"^dgrp_[a-z0-9][a-z0-9_-]{0,122}$"
BASE64_PATTERN: Final = r"^[A-Za-z0-9+/]*={0,2}$"
