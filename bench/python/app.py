"""The simplest alternative a Twilio user would write: a Flask app that verifies each status
callback with Twilio's own SDK and counts statuses in a dict (per worker process).
Served by gunicorn for the comparison in bench/run."""

from collections import Counter

from flask import Flask, abort, request
from twilio.request_validator import RequestValidator

import os

app = Flask(__name__)
validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
counts = Counter()


@app.post("/twilio/status")
def status():
    signature = request.headers.get("X-Twilio-Signature", "")
    if not validator.validate(request.url, request.form, signature):
        abort(403)
    counts[request.form.get("MessageStatus", "unknown")] += 1
    return "", 200


@app.get("/counts")
def show_counts():
    return dict(counts)
