"""Nothing sensitive is left behind: a corpus of secrets and personal data goes
through the gateway (prompts masked or blocked, requests refused, provider
answers masked, plain and streamed, both providers), then every value, and
every token a user sent, is looked for in the access log, Envoy's own log,
the control plane's log, every file of the data directory (the control
plane's database included, with the sessions the policy records) and
Envoy's stats. None may be there.

The values are made fresh for each run (valid check digits where the
detectors check them), so a hit can only come from this run's traffic."""

from __future__ import annotations

import json
import random
import secrets
import string
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from harness.stack import STAND_IN_KEYS, Ports, Stack, default_filter_config, http, wait_until

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def luhn_card(prefix: str = "4", length: int = 16) -> str:
    digits = [int(d) for d in prefix] + [random.randrange(10) for _ in range(length - len(prefix) - 1)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        # The check digit will sit right of these, so the first from the right doubles.
        total += sum(divmod(d * 2, 10)) if i % 2 == 0 else d
    card = "".join(map(str, digits)) + str((10 - total % 10) % 10)
    return " ".join(card[i:i + 4] for i in range(0, length, 4))


def github_token() -> str:
    """ghp_, 30 random characters, their CRC32 in six base62 digits (GitHub's format)."""
    body = rand(30)
    n, check = zlib.crc32(body.encode()), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        check = (string.digits + string.ascii_uppercase + string.ascii_lowercase)[digit] + check
    return "ghp_" + body + check


def iban_de() -> str:
    bban = "".join(str(random.randrange(10)) for _ in range(18))
    numeric = int(bban + "1314" + "00")  # D=13, E=14, then "00" for the check digits
    check = 98 - numeric % 97
    raw = f"DE{check:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def corpus() -> dict[str, str]:
    """One fresh value per kind the default policy detects."""
    run = secrets.token_hex(4)
    jwt = ".".join([b64url(b'{"alg":"HS256","typ":"JWT"}'),
                    b64url(json.dumps({"sub": f"leak-{run}", "name": "Leaky"}).encode()), rand(43, ALNUM + "-_")])
    pem_lines = [rand(64, B64) for _ in range(4)]
    return {
        "email": f"leak.{run}@example.com",
        "email2": f"j.{run}+tag@mail.example.co.uk",
        "card": luhn_card("4"),
        "card2": luhn_card("51").replace(" ", ""),
        "iban": iban_de(),
        "phone": f"+44 20 7946 {random.randrange(1000, 9999)}",
        "phone2": f"+1 (415) 555-{random.randrange(1000, 9999)}",
        "ssn": f"{random.randrange(100, 600):03d}-{random.randrange(10, 99):02d}-{random.randrange(1000, 9999):04d}",
        "ipv4": f"10.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(1, 250)}",
        "aws_key_id": "AKIA" + rand(16, string.ascii_uppercase + string.digits),
        "aws_secret": rand(40, ALNUM + "/+"),
        "github": github_token(),
        "slack": f"xoxb-{random.randrange(10**11, 10**12)}-{random.randrange(10**12, 10**13)}-{rand(24)}",
        "stripe": "sk_live_" + rand(24),
        "openai": "sk-" + rand(48),
        "anthropic": "sk-ant-api03-" + rand(93, ALNUM + "-_") + "AA",
        "jwt": jwt,
        # Each line of the key body on its own: a log would escape the newlines.
        **{f"pem{i}": line for i, line in enumerate(pem_lines)},
    }


def prompt_with(values: dict[str, str]) -> str:
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(values[f"pem{i}"] for i in range(4)) + \
        "\nAB==\n-----END RSA PRIVATE KEY-----"
    return (f"Mail {values['email']} or {values['email2']}, card {values['card']} / {values['card2']}, "
            f"IBAN {values['iban']}, call {values['phone']} or {values['phone2']}, ssn {values['ssn']}, "
            f"host {values['ipv4']}. aws_access_key_id = {values['aws_key_id']}\n"
            f"aws_secret_access_key = {values['aws_secret']}\n"
            f"tokens {values['github']} {values['slack']} {values['stripe']} {values['openai']} "
            f"{values['anthropic']} {values['jwt']}\n{pem}\n")


def without_key(values: dict[str, str]) -> dict[str, str]:
    """The corpus minus the private key, for requests the block rule must not stop."""
    return {k: v for k, v in values.items() if not k.startswith("pem")}


def prompt_without_key(values: dict[str, str]) -> str:
    text = prompt_with(values)
    return text[:text.index("-----BEGIN")]


@dataclass
class Run:
    stack: Stack
    values: dict[str, str]
    tokens: list[str]
    agent: str
    stats: dict[str, str] = field(default_factory=dict)

    def sought(self) -> dict[str, str]:
        """The corpus, the users' tokens, and the gateway's own keys: the
        provider keys it adds upstream and, when the harness has one, the
        secret the filter and the control plane share."""
        keys = {f"provider_key:{name}": key for name, key in STAND_IN_KEYS.items()}
        if shared := getattr(self.stack, "gateway_secret", None):
            keys["gateway_secret"] = shared
        return {**self.values, **{f"token{i}": t for i, t in enumerate(self.tokens)}, **keys}


def leaks_in(text: str, run: Run) -> list[str]:
    return sorted(name for name, value in run.sought().items() if value in text)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    config = default_filter_config()
    # Private keys are blocked outright; everything else is masked.
    config["policy"]["rules"].insert(0, {"name": "no-keys", "detect": ["private_key"], "action": "block"})
    # Sessions recorded (masked) at the control plane: its database holds them.
    config["policy"]["record"] = "masked"
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("leaks"), filter_config=yaml.safe_dump(config))
    try:
        values = corpus()
        alice = stack.token("alice", ["engineering"])
        agent = f"leak-test/{uuid.uuid4()}"
        run = Run(stack, values, [alice, values["jwt"]], agent)
        send_corpus(run, alice)
        wait_until("every request's record", lambda: len(final_records(stack, agent)) >= EXPECTED_RECORDS)
        auditor = stack.token("audrey", ["warden-auditors"])

        def sessions() -> int:
            out = stack.cli("sessions", "list", "--subject", "alice", "--json", token=auditor).stdout
            return len(json.loads(out)["sessions"])

        wait_until("the recorded sessions", lambda: sessions() >= RECORDED_SESSIONS, timeout=30)
        for path in ("/stats", "/stats?format=json", "/stats/prometheus"):
            status, _, body = http("GET", f"{stack.admin_url}{path}")
            assert status == 200, path
            run.stats[path] = body.decode(errors="replace")
    finally:
        # Stopped before the files are read: Envoy flushes its buffers and the
        # control plane closes its database on the way out.
        stack.stop()
    return run


EXPECTED_RECORDS = 11
# Alice's requests the policy let through (masked), and the blocked one.
RECORDED_SESSIONS = 8


def final_records(stack: Stack, agent: str) -> list[dict]:
    return [r for r in stack.access_log_records()
            if r.get("user_agent") == agent and r["log_type"] == "DownstreamEnd"]


def send_corpus(run: Run, token: str) -> None:
    stack, values, agent = run.stack, run.values, run.agent
    # Streams in frames of 64 bytes (the stand-in's default of 4 makes a long
    # answer take half a minute).
    auth = {"authorization": f"Bearer {token}", "user-agent": agent, "x-stand-in-chunk-size": "64"}
    chat_url = f"{stack.gateway_url}/openai/v1/chat/completions"
    messages_url = f"{stack.gateway_url}/anthropic/v1/messages"
    masked_prompt = prompt_without_key(values)
    everything = prompt_with(values)

    def openai_body(content: str, stream: bool = False) -> dict:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
        return body | ({"stream": True, "stream_options": {"include_usage": True}} if stream else {})

    def anthropic_body(content: str, stream: bool = False) -> dict:
        return {"model": "claude-sonnet-4-6", "max_tokens": 500, "stream": stream,
                "messages": [{"role": "user", "content": content}]}

    answers: list[bytes] = []
    # 1-2. Prompts masked before the provider (the stand-in echoes them back).
    for stream in (False, True):
        status, _, body = http("POST", chat_url, body=openai_body(masked_prompt, stream), headers=auth)
        assert status == 200
        answers.append(body)
    # 3. Anthropic, with the token as its SDK sends it (x-api-key).
    status, _, body = http("POST", messages_url, body=anthropic_body(masked_prompt),
                           headers={"x-api-key": token, "user-agent": agent, "x-stand-in-chunk-size": "64"})
    assert status == 200
    answers.append(body)
    # 4. A prompt with a private key: blocked, nothing upstream.
    status, _, body = http("POST", chat_url, body=openai_body(everything), headers=auth)
    assert status == 403
    answers.append(body)
    # 5-8. Provider answers carrying every value: masked on the way back,
    # whole and streamed, both providers.
    stack.provider_queue_replies([masked_prompt] * 4)
    for url, make in ((chat_url, openai_body), (messages_url, anthropic_body)):
        for stream in (False, True):
            status, _, body = http("POST", url, body=make("repeat after me", stream), headers=auth)
            assert status == 200
            answers.append(body)
    # 9. A corpus value as the bearer token: refused, and not written anywhere.
    status, _, _ = http("POST", chat_url, body=openai_body(everything),
                        headers={"authorization": f"Bearer {values['jwt']}", "user-agent": agent})
    assert status == 401
    # 10. Values in the query string and in an oversized body.
    query = f"?email={values['email']}&key={values['openai']}"
    status, _, _ = http("GET", f"{stack.gateway_url}/openai/v1/models{query}", headers=auth)
    assert status == 403  # refused: a URL cannot be masked (warden.query_refused)
    status, _, _ = http("POST", chat_url, body=openai_body(masked_prompt + "x" * 2_000_000), headers=auth)
    assert status == 413
    assert len(answers) == 8
    # What the clients read has no value either (the stand-in echoed the
    # masked prompt, or was told to answer with the values).
    for body in answers:
        text = body.decode(errors="replace")
        found = [k for k, v in values.items() if v in text]
        assert not found, (found, text[:500])
    # Nor did the provider get one, in a body or in a URL.
    received = json.dumps([[r["path"], r["body"]] for r in stack.provider_received()])
    assert not [k for k, v in values.items() if v in received], "a value reached the provider"


def test_the_search_finds_what_is_there(run):
    """The positive control: the run left records, and the search sees them."""
    log = (run.stack.data_dir / "logs" / "access.log").read_text()
    records = final_records(run.stack, run.agent)
    assert len(records) == EXPECTED_RECORDS
    decisions = sorted(r["decision"] for r in records)
    assert decisions.count("masked") >= 6 and "blocked" in decisions and "unauthenticated" in decisions
    assert any("personal-data:mask:" in (r["rules"] or "") for r in records)
    assert run.agent in log and "agent" not in run.sought()


def test_no_value_in_the_access_log(run):
    assert leaks_in((run.stack.data_dir / "logs" / "access.log").read_text(), run) == []


def test_no_value_in_envoys_log(run):
    assert leaks_in((run.stack.data_dir / "logs" / "envoy.log").read_text(errors="replace"), run) == []


def test_no_value_in_the_control_planes_log(run):
    assert leaks_in((run.stack.data_dir / "logs" / "control-plane.log").read_text(errors="replace"), run) == []


def test_no_value_in_any_file_of_the_data_directory(run):
    files = [p for p in Path(run.stack.data_dir).rglob("*") if p.is_file()]
    # The control plane's database is among them.
    assert any(p.suffix in (".db", ".sqlite", ".sqlite3") or "sqlite" in p.name for p in files), files
    found = {}
    placeholders = False
    for path in files:
        data = path.read_bytes().decode("latin-1")
        if hits := leaks_in(data, run):
            found[str(path.relative_to(run.stack.data_dir))] = hits
        placeholders |= "warden" in path.name and "[EMAIL]" in data
    assert found == {}
    # The positive control: the database does hold the recorded conversations,
    # as the gateway masked them.
    assert placeholders, "no masked session found in the control plane's database"


def test_no_value_in_envoys_stats(run):
    assert len(run.stats) == 3 and all(run.stats.values())
    assert "warden" in run.stats["/stats"]
    for path, text in run.stats.items():
        assert leaks_in(text, run) == [], path
