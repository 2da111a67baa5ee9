"""One typed record per request: the only raw material of every benchmark statistic.

Times are `time.perf_counter()` seconds. Records in memory hold absolute values; records read
back from a CSV hold values relative to the run's first start. Every statistic is a difference
of two times of the same run, so both give the same numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


class ErrorKind(str, Enum):
    """Why a request failed; stored as its string value."""

    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECTION_ERROR = "connection_error"      # could not connect (refused, DNS, ...)
    CONNECTION_DROPPED = "connection_dropped"  # connection closed mid-response
    INCOMPLETE_STREAM = "incomplete_stream"    # stream ended cleanly but without `data: [DONE]`
    STREAM_ERROR = "stream_error"              # server sent an error object inside the stream
    TIMEOUT = "timeout"                        # per-request timeout hit
    BAD_RESPONSE = "bad_response"              # undecodable SSE payload
    CLIENT_ERROR = "client_error"              # anything else raised on our side


@dataclass
class RequestRecord:
    request_id: str
    start: float                          # just before the request is sent
    end: float | None = None              # stream finished, or the failure was noticed
    first_token: float | None = None      # first content / tool-call delta (not the role chunk)
    token_times: list[float] = field(default_factory=list)  # arrival of each token-carrying chunk
    prompt_tokens: int | None = None      # from the server's usage block
    completion_tokens: int | None = None  # from the server's usage block
    status: int | None = None             # HTTP status, None if no response
    success: bool = False
    error_kind: str | None = None         # an ErrorKind value
    error: str | None = None              # short message
    scheduled: float | None = None        # open loop: when it was due to be sent (client lag = start - scheduled)

    def to_row(self, t0: float = 0.0) -> dict[str, Any]:
        """A flat dict for a CSV row, times shifted by t0 (token_times as a JSON list)."""
        row = asdict(self)
        for key in ("start", "end", "first_token", "scheduled"):
            if row[key] is not None:
                row[key] = row[key] - t0
        row["token_times"] = json.dumps([round(t - t0, 9) for t in self.token_times])
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RequestRecord":
        """Inverse of to_row (accepts what pandas reads back from the CSV: NaN for empty cells)."""
        def clean(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        kw = {f.name: clean(row.get(f.name)) for f in fields(cls)}
        kw["token_times"] = json.loads(kw["token_times"] or "[]")
        for key in ("prompt_tokens", "completion_tokens", "status"):
            if kw[key] is not None:
                kw[key] = int(kw[key])
        kw["success"] = str(kw["success"]).lower() in ("true", "1")
        kw["request_id"] = str(kw["request_id"])
        return cls(**kw)
