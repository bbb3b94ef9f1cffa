"""What a shift hands over (its notes and its alerts), asked of the alerts API for the
KPI API's shift report.

Notes and alerts live in the alerts service's store; the KPI API knows neither. The
mailed report gets them from the alerts service itself (services/alerts/reports.py).
The report read in a browser or fetched by `linepulse report` gets them here, from the
alerts API the board already uses (`--alerts-url`, `GET /v1/handover`). A report never
fails for want of them: when the alerts API cannot say, the report says why instead.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

# The report waits this long at most for the alerts API before it goes without.
HANDOVER_TIMEOUT_S: Final = 5.0


async def fetch_handover(alerts_url: str, line: str, day: str, shift: str) -> dict[str, Any]:
    """The report's fields from the alerts API: `notes`, `alerts` and `alerts_complete`;
    or `handover_error` saying why there are none."""
    where = alerts_url.rstrip("/") + "/v1/handover"
    try:
        async with httpx.AsyncClient(timeout=HANDOVER_TIMEOUT_S) as client:
            answer = await client.get(where, params={"line": line, "date": day, "shift": shift})
    except httpx.HTTPError as error:
        said = str(error) or type(error).__name__
        return {"handover_error": f"the alerts API at {alerts_url} did not answer: {said}"}
    if answer.status_code != httpx.codes.OK:
        try:
            detail = str(answer.json().get("detail", answer.text))
        except ValueError:
            detail = answer.text
        return {
            "handover_error": (
                f"the alerts API at {alerts_url} answered {answer.status_code}: {detail}"
            )
        }
    body: dict[str, Any] = answer.json()
    return {
        "notes": body["notes"],
        "alerts": body["alerts"],
        "alerts_complete": body["alerts_complete"],
    }
