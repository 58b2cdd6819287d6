"""The ZeroMQ publisher (an XPUB socket: a PUB that also hears its subscriptions) and the message contract.

Every message is multipart ``[topic, JSON]`` (UTF-8). Topics: ``scores`` (every window),
``detection.<label>`` (event start/end), ``status`` (every ``status_interval_s``). Every
payload carries ``schema`` (integer version), ``seq`` (+1 per message from this
publisher, so a subscriber sees gaps), ``ts`` (UNIX seconds) and ``source``. Sends never
block: past the high-water mark ZeroMQ drops, and the drop shows as a ``seq`` gap.

Safe by default: a PUB bound beyond loopback needs CURVE keys (``soundwatch keys``) or an
explicit ``insecure``. With CURVE, only clients that know the server's public key (and,
with a clients directory, whose own public key is in it) receive anything.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from soundwatch import strict_json
from soundwatch.errors import UserError, check_output_dir

SCHEMA = 1


_TCP = re.compile(r"tcp://(\[[^\]]*\]|[^:\[\]]*)(?::(.*))?")


def _tcp_host(endpoint: str) -> str | None:
    """The host part of a ``tcp://HOST:PORT`` endpoint (IPv6 without brackets), None for other transports."""
    match = _TCP.fullmatch(endpoint)
    return match.group(1).strip("[]") if match else None


def is_local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: loopback TCP, ipc://, inproc://."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = _tcp_host(endpoint) or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_endpoint(endpoint: str, bind: bool) -> None:
    """Refuse a ``tcp://`` endpoint whose port is not 1-65535 or whose host is not an address, a host
    name that resolves or (to bind) a network interface. ``*`` as the host binds every interface;
    there is no ephemeral port (``:*``): a subscriber must know where to connect."""
    if not endpoint.startswith("tcp://"):
        if "://" not in endpoint:
            raise UserError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
        return  # ipc://, inproc://: ZeroMQ checks them when binding
    match = _TCP.fullmatch(endpoint)
    if match is None or match.group(2) is None:
        raise UserError(f"endpoint {endpoint}: expected tcp://HOST:PORT (an IPv6 host in brackets: tcp://[::1]:5556)")
    host, port = match.group(1), match.group(2)
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(f"endpoint {endpoint}: port {port!r} is not a number in 1-65535")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise UserError(f"endpoint {endpoint}: {host} is not a valid IPv6 address") from None
        return
    if bind and host == "*":
        return
    if not host:
        raise UserError(f"endpoint {endpoint}: no host (give an address, e.g. tcp://127.0.0.1:{port})")
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if bind and host in {name for _, name in socket.if_nameindex()}:
        return
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        kinds = "an IP address, a host name that resolves" + (" or a network interface" if bind else "")
        raise UserError(
            f"endpoint {endpoint}: invalid host {host!r}: not {kinds} ({getattr(exc, 'strerror', None) or exc})"
        ) from None


def _allow_ipv6(sock: zmq.Socket, endpoint: str) -> None:
    """ZeroMQ speaks IPv6 only when asked: ask for it when the host is an IPv6 address."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)


def _load_key(path: str | Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"CURVE key file {path}: cannot read it ({exc}); make keys with `soundwatch keys`") from exc
    if secret and private is None:
        raise UserError(f"CURVE key file {path} holds no secret key (use the .key_secret file)")
    return public, private


class Publisher:
    def __init__(
        self,
        endpoint: str,
        source: str,
        sndhwm: int = 1000,
        context: zmq.Context | None = None,
        curve_secret_key: str = "",
        curve_clients_dir: str = "",
        insecure: bool = False,
    ):
        self.endpoint = endpoint
        self.source = source
        self.seq = 0
        self.send_would_block = 0  # sends ZeroMQ refused with EAGAIN; NOT messages dropped at the HWM
        check_endpoint(endpoint, bind=True)
        if not is_local(endpoint) and not curve_secret_key and not insecure:
            raise UserError(
                f"endpoint {endpoint} is reachable from other machines: give CURVE keys "
                "(`soundwatch keys --out DIR`, then --curve-secret-key DIR/server.key_secret) or pass --insecure"
            )
        self._ctx = context or zmq.Context.instance()
        self._auth = None
        # XPUB: a PUB that also hears its subscribers' subscriptions, so a run can wait for its first
        # subscriber (wait_for_subscriber) instead of publishing a short file before anyone has joined
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only each topic's first
        self.subscriptions = 0  # subscription messages heard (a subscriber sends one per topic prefix)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        _allow_ipv6(self._sock, endpoint)
        if curve_secret_key:
            public, secret = _load_key(curve_secret_key, secret=True)
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            if curve_clients_dir:
                if not Path(curve_clients_dir).is_dir():
                    raise UserError(f"CURVE clients directory {curve_clients_dir} does not exist")
                self._auth.configure_curve(domain="*", location=str(curve_clients_dir))
            else:
                self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            self._sock.curve_secretkey = secret
            self._sock.curve_publickey = public
            self._sock.curve_server = True
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise UserError(
                    f"endpoint {endpoint} is already in use (another soundwatch?); pick another with --endpoint"
                ) from exc
            raise UserError(f"cannot bind endpoint {endpoint}: {exc.strerror}") from exc
        self.bound = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    @property
    def send_failures(self) -> int:
        """The ``send_failures`` status field: ``send_would_block`` under its documented name."""
        return self.send_would_block

    def _hear_subscriptions(self, timeout_ms: int = 0) -> None:
        """Read the subscription messages queued on the socket (they would pile up unread otherwise)."""
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            frame = self._sock.recv(zmq.NOBLOCK)
            if frame[:1] == b"\x01":
                self.subscriptions += 1
            timeout_ms = 0

    def wait_for_subscriber(self, timeout_s: float, stop=None) -> bool:
        """Wait until a subscriber has subscribed (True), ``timeout_s`` has passed or ``stop`` is set (False).

        A subscription reaches the publisher only once the subscriber's connection is up, so what is
        published after this returns True reaches that subscriber."""
        deadline = time.monotonic() + timeout_s
        while not self.subscriptions:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                return False
            self._hear_subscriptions(int(min(left, 0.1) * 1000) + 1)
        return True

    def publish(self, topic: str, payload: dict) -> None:
        self._hear_subscriptions()
        message = {"schema": SCHEMA, "seq": self.seq, "ts": time.time(), "source": self.source, **payload}
        self.seq += 1
        try:
            self._sock.send_multipart([topic.encode(), strict_json.dumps(message).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_would_block += 1

    def close(self, linger: int | None = None) -> None:
        self._sock.close(linger=linger)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def subscribe(
    endpoint: str,
    topics: list[str],
    context: zmq.Context | None = None,
    server_key: str = "",
    client_secret_key: str = "",
) -> zmq.Socket:
    """A SUB socket connected to ``endpoint`` and subscribed to each topic prefix ("" = all).

    With ``server_key`` (the server's public .key file) the connection uses CURVE, with the
    client key pair in ``client_secret_key`` (made on the spot when not given).
    """
    check_endpoint(endpoint, bind=False)
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    _allow_ipv6(sock, endpoint)
    if server_key:
        sock.curve_serverkey = _load_key(server_key, secret=False)[0]
        if client_secret_key:
            sock.curve_publickey, sock.curve_secretkey = _load_key(client_secret_key, secret=True)
        else:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise UserError(f"cannot connect to {endpoint}: {exc.strerror}") from exc
    return sock


class MalformedMessage(ValueError):
    """A received message that breaks the contract; the text says what is wrong with it."""


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a JSON number")


def decode(frames: list[bytes]) -> tuple[str, dict]:
    """``(topic, payload)`` from the frames of one message, or MalformedMessage saying what is wrong."""
    if len(frames) != 2:
        raise MalformedMessage(f"{len(frames)} frame{'s' * (len(frames) != 1)} (expected 2: topic, JSON)")
    try:
        topic = frames[0].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"topic is not UTF-8: {frames[0][:40]!r}") from None
    try:
        payload = json.loads(frames[1].decode("utf-8"), parse_constant=_not_a_number)
    except UnicodeDecodeError:
        raise MalformedMessage(f"body of topic {topic[:40]!r} is not UTF-8") from None
    except ValueError as exc:
        raise MalformedMessage(f"body of topic {topic[:40]!r} is not strict JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise MalformedMessage(f"body of topic {topic[:40]!r} is a JSON {type(payload).__name__}, not an object")
    return topic, payload


def receive(sock: zmq.Socket, timeout_ms: int) -> tuple[str, dict] | None:
    """One ``(topic, payload)`` or None after ``timeout_ms``; MalformedMessage for one that breaks the contract."""
    if not sock.poll(timeout_ms):
        return None
    return decode(sock.recv_multipart())


_KEY_BANNER = {
    True: "#   ****  Generated on {0} by soundwatch keys  ****\n#   ZeroMQ CURVE **Secret** Certificate\n"
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n",
    False: "#   ****  Generated on {0} by soundwatch keys  ****\n#   ZeroMQ CURVE Public Certificate\n"
    "#   Exchange securely, or use a secure mechanism to verify the contents\n#   of this file after exchange.\n\n",
}


def _write_key_file(path: Path, public: bytes, secret: bytes | None = None) -> None:
    """A certificate in the ZPL format of pyzmq's ``zmq.auth.certs`` (``load_certificate`` reads it),
    created with O_EXCL|O_NOFOLLOW: never over an existing file, never through a planted symlink,
    and a secret is mode 0600 from its first byte (no write-then-chmod window)."""
    text = _KEY_BANNER[secret is not None].format(time.strftime("%Y-%m-%d %H:%M:%S")) + "metadata\ncurve\n"
    text += f'    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600 if secret is not None else 0o644)
    except FileExistsError:
        raise UserError(
            f"{path} appeared while the keys were written (another process?); nothing overwritten"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot create key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def make_keys(directory: Path, force: bool = False) -> dict[str, Path]:
    """A server and a client CURVE key pair in ``directory`` (secrets 0600), and ``clients/``
    holding the client's public key: the authorised-clients directory for the server.

    Existing key files are refused unless ``force`` (then they are removed, a symlink itself and
    never what it points to, and written anew)."""
    directory = Path(directory)
    clients = directory / "clients"
    made = {
        "server_public": directory / "server.key",
        "server_secret": directory / "server.key_secret",
        "client_public": directory / "client.key",
        "client_secret": directory / "client.key_secret",
        "clients_dir": clients,
    }
    targets = [
        made["server_public"],
        made["server_secret"],
        made["client_public"],
        made["client_secret"],
        clients / "client.key",
    ]
    check_output_dir("--out", directory)  # a file there, or a path under one, says so
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"--out {directory}: cannot create the key directory ({exc.strerror})") from exc
    if clients.is_symlink() or (clients.exists() and not clients.is_dir()):
        raise UserError(f"{clients} is a symlink or not a directory: refusing to write keys through it")
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not force:
        raise UserError(
            f"key files already exist: {', '.join(map(str, existing))}; refusing to overwrite them "
            "(whoever uses them would be locked out): pass --force to replace them, or pick another --out"
        )
    for old in existing:
        if old.is_dir() and not old.is_symlink():
            raise UserError(f"{old} is a directory: cannot replace it with a key file")
        old.unlink()
    clients.mkdir(exist_ok=True, mode=0o700)
    for name in ("server", "client"):
        public, secret = zmq.curve_keypair()
        _write_key_file(made[f"{name}_public"], public)
        _write_key_file(made[f"{name}_secret"], public, secret)
        if name == "client":
            _write_key_file(clients / "client.key", public)
    return made
