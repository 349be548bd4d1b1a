#!/usr/bin/env python3
"""Sign random webhook requests with Twilio's own Python SDK, for tests/sdk_crosscheck.rs.

Usage: twilio_signer.py N [SEED]

Prints N JSON lines (seeded, so a failure reproduces), each one of:

  {"kind": "form", "url": ..., "params": [[key, value], ...], "token": ..., "signature": ...,
   "received_url": ..., "sdk_accepts_received": bool}
  {"kind": "json", "base_url": ..., "url": ..., "body": ..., "body_sha256": ...,
   "token": ..., "signature": ..., "received_url": ..., "sdk_accepts_received": bool}

`url` is what was signed (for JSON: `base_url` plus bodySHA256). `received_url` is the same URL
with possibly another port, as a server behind a proxy might see it; `sdk_accepts_received` is
the SDK's own `validate` verdict there (it tries the port removed and the default port added).

Signatures come from twilio.request_validator.RequestValidator.compute_signature, body hashes from
its compute_hash and verdicts from its validate: this script only makes up requests.
"""

import json
import random
import sys

from twilio.request_validator import RequestValidator

# Characters that have tripped signers: separators, encodings, case, non-ASCII (2-, 3- and 4-byte
# UTF-8, including code points above U+FFFF where UTF-16 and code point order disagree).
ALPHABET = (
    "abcXYZ019"
    " +'&=%?#/@:;,.-_~\"\\"
    "ñáéíóúÅß"
    "日本語中文"
    "\u00a0\u2028\ufeff\uffff"
    "😀𝄞\U0010fffd"
)
KEYS = [
    "MessageSid",
    "MessageStatus",
    "ErrorCode",
    "To",
    "From",
    "Body",
    "body",
    "BODY",
    "Reason",
    "ReasonConferenceEnded",
    "a",
    "ab",
    "A",
    "MessagingBinding.Address",
    "",
]


class MultiDict:
    """The smallest multi-valued mapping compute_signature accepts (it calls getall)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __iter__(self):
        return iter([key for key, _ in self.pairs])

    def __len__(self):
        return len(self.pairs)

    def getall(self, key):
        return [value for k, value in self.pairs if k == key]


def random_text(rng, max_len):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def random_params(rng):
    pairs = []
    for _ in range(rng.randint(0, 10)):
        key = rng.choice(KEYS) if rng.random() < 0.7 else random_text(rng, 8)
        roll = rng.random()
        if roll < 0.15:
            value = ""
        elif roll < 0.3 and pairs:
            value = rng.choice(pairs)[1]  # repeat an earlier value, maybe under the same key
        else:
            value = random_text(rng, 16)
        pairs.append([key, value])
        if rng.random() < 0.15:
            pairs.append([key, value])  # exact duplicate pair
    return pairs


def random_urls(rng):
    """A URL Twilio signed and the URL the server saw, which may differ in its port only."""
    scheme = rng.choice(["https", "http"])
    userinfo = rng.choice(["", "", "", "user@", "user:pass@", "u%40x:p%3Ass@"])
    host = rng.choice(["mycompany.com", "tally.example.org", "127.0.0.1", "[::1]", "[2001:db8::7]"])
    ports = ["", "", "", ":443", ":80", ":8443", ":1234"]
    signed_port = rng.choice(ports)
    received_port = rng.choice(ports) if rng.random() < 0.5 else signed_port
    path = rng.choice(["/", "/twilio/status", "/webhook/España", "//double", "/it's", "/a%20b"])
    query = ""
    if rng.random() < 0.6:
        parts = []
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(["foo", "bar", "type", "año", "q"])
            value = rng.choice(
                ["1", "hello%20world", "test%2Bvalue", "It%27s+amazing", "It's", "a+b", "", "ñ"]
            )
            parts.append(key + "=" + value)
        query = "?" + "&".join(parts)
    prefix = scheme + "://" + userinfo + host
    return prefix + signed_port + path + query, prefix + received_port + path + query


def random_token(rng):
    if rng.random() < 0.9:
        return "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return random_text(rng, 12) or "x"


def random_json_body(rng):
    value = {
        "type": rng.choice(["com.twilio.messaging.message.delivered", "com.twilio.comms-api.operation.completed"]),
        "id": "EZ" + "".join(rng.choice("0123456789abcdef") for _ in range(32)),
        "data": {"text": random_text(rng, 20), "n": rng.randint(-5, 10**12), "ok": rng.random() < 0.5},
    }
    if rng.random() < 0.3:
        value = [value, value]
    if rng.random() < 0.1:
        return ""
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))


def with_body_sha256(url, body_hash):
    return url + ("&" if "?" in url else "?") + "bodySHA256=" + body_hash


def main():
    count = int(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)
    out = sys.stdout
    for _ in range(count):
        token = random_token(rng)
        validator = RequestValidator(token)
        url, received = random_urls(rng)
        if rng.random() < 0.6:
            params = random_params(rng)
            signature = validator.compute_signature(url, MultiDict(params))
            case = {
                "kind": "form",
                "url": url,
                "params": params,
                "token": token,
                "signature": signature,
                "received_url": received,
                "sdk_accepts_received": validator.validate(received, MultiDict(params), signature),
            }
        else:
            body = random_json_body(rng)
            body_hash = validator.compute_hash(body)
            signed_url = with_body_sha256(url, body_hash)
            received_url = with_body_sha256(received, body_hash)
            signature = validator.compute_signature(signed_url, {})
            case = {
                "kind": "json",
                "base_url": url,
                "url": signed_url,
                "body": body,
                "body_sha256": body_hash,
                "token": token,
                "signature": signature,
                "received_url": received_url,
                "sdk_accepts_received": validator.validate(received_url, body, signature),
            }
        out.write(json.dumps(case, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
