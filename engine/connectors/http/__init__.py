"""HTTP connectors. Source kind `webhook`: PACS notifications POSTed over HTTP(S).

Authentication is required: `auth: {bearer: ${TOKEN}}` (header `Authorization: Bearer <token>`)
or `auth: {hmac: {secret: ${SECRET}, header: X-Signature, algorithm: sha256}}` (hex HMAC of the
raw body, optionally prefixed `sha256=`). `auth: none` is accepted only when `host` is a loopback
address, i.e. for a sender on the same machine; configuration validation refuses it otherwise.

Bodies, `format: generic` (the default)::

    {"event": "study.stable" | "study.available", "study_uid": "1.2.3...",
     "accession": "A123" | "accessions": ["A123", ...], "patient_id": "...", "pacs_id": "..."}

`format: orthanc`: what this Lua script, installed in Orthanc (1.2.1 or later, for the headers
argument of HttpPost) through its `LuaScripts` setting, posts when a study becomes stable
(`StableAge` seconds after its last instance). Lua in Orthanc has no HMAC function, so it
authenticates with a bearer token, read from Orthanc's environment. Point `HttpsCACertificates`
in Orthanc's configuration at the CA of the webhook's certificate when the URL is https.
`DumpJson(..., true)` keeps strings as strings (accession numbers made of digits would otherwise
become numbers, which the webhook refuses)::

    local url = 'https://radbridge.example.org:8443/notify'
    local token = os.getenv('RADBRIDGE_WEBHOOK_TOKEN')

    function OnStableStudy(studyId, tags, metadata)
       local study = ParseJson(RestApiGet('/studies/' .. studyId))
       local body = {
          ChangeType = 'StableStudy',
          ID = studyId,
          MainDicomTags = {
             StudyInstanceUID = study['MainDicomTags']['StudyInstanceUID'],
             AccessionNumber = study['MainDicomTags']['AccessionNumber'],
          },
          PatientMainDicomTags = { PatientID = study['PatientMainDicomTags']['PatientID'] },
       }
       HttpPost(url, DumpJson(body, true), {
          ['Authorization'] = 'Bearer ' .. token,
          ['Content-Type'] = 'application/json',
       })
    end

Orthanc does not retry a failed HttpPost (it only logs it), and raises StableStudy again when a
late instance arrives: the engine treats repeats as duplicates, and a change-feed source can
catch up what a webhook missed.

Each notification reaches the channel as Inbound(kind="notification", raw=Notification.to_json(),
dedup=sha256 of that JSON, type=event). Logs and audit entries carry peers, sizes, status codes
and reasons; never tokens, signatures, bodies or identifiers from them.
"""

from engine.connectors.http.config import WebhookAuth, WebhookHmac, WebhookSourceConfig
from engine.connectors.http.payload import PayloadError, parse
from engine.connectors.http.webhook import WebhookSource

__all__ = [
    "PayloadError",
    "WebhookAuth",
    "WebhookHmac",
    "WebhookSource",
    "WebhookSourceConfig",
    "parse",
]
