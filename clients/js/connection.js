/**
 * The transport under shardq.js: one logical WebSocket connection to a
 * list of nodes that authenticates with a token (PROTOCOL 3.1) and
 * reconnects with backoff; the error type, close codes and the helpers the
 * subscriber and publisher share. Applications import shardq.js, which
 * re-exports what is public here.
 *
 * @module shardq/connection
 */

/** The protocol version this client speaks (the `hello` frame's `version`). */
export const VERSION = "shardq/1";

/**
 * WebSocket close codes and what they mean (PROTOCOL 7; 1006 is the
 * browser's own code for a connection lost without a close frame).
 * @type {Readonly<Record<number, string>>}
 */
export const CLOSE_CODES = Object.freeze({
  1000: "normal", 1001: "going away", 1006: "connection lost", 1009: "frame too large",
  4001: "auth failed", 4002: "handshake timeout", 4003: "protocol error",
  4004: "topic refused", 4008: "slow consumer", 4009: "ping timeout", 4010: "resync",
});

/**
 * An error with a protocol error code (PROTOCOL 6: `not_authorized`,
 * `unavailable`, `outcome_unknown`, ...), or one of this client's own:
 * `token` (the token function failed) and `closed` (the client was closed).
 */
export class ShardqError extends Error {
  /**
   * @param {string} code the error code
   * @param {string} message what happened, for people
   */
  constructor(code, message) {
    super(message);
    this.name = "ShardqError";
    /** @type {string} the error code */
    this.code = code;
  }
}

/**
 * @typedef {object} Position where a message sits in its topic's stream
 * @property {number} epoch the owner's epoch (below 2^53)
 * @property {number} offset the message's offset in the epoch (0: before the first)
 */

/**
 * @typedef {object} ClientOptions
 * @property {string[]} urls node URLs (`ws://` or `wss://`; the endpoint's
 *   path is added when a URL has none), tried in order: after a failure the
 *   next one is used
 * @property {string | (() => string | Promise<string>)} token a token (JWT),
 *   or a function returning a fresh one, called at every (re)connection
 * @property {string} [name] a name for the node's logs (`auth.node`)
 * @property {(state: string, detail: object) => void} [onstate] called at
 *   every state change (see {@link Connection})
 * @property {{initialMs?: number, maxMs?: number, factor?: number}} [backoff]
 *   the delay before a reconnection: `initialMs` (250) times `factor` (2)
 *   per failed attempt, capped at `maxMs` (10000), of which a random half
 *   is taken off (jitter)
 * @property {number} [handshakeTimeoutMs] time allowed to open the socket
 *   and authenticate (10000)
 */

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** What a publish whose outcome is unknown should do (error messages). */
export const RETRY = "it may or may not have been sequenced; publish it again with the same key";

/** Checks a queue and event name; returns the topic `queue/event`. */
export function topicOf(queue, event, allowWildcard) {
  if (!NAME.test(String(queue)) || !(NAME.test(String(event)) || (allowWildcard && event === "*"))) {
    throw new ShardqError(
      "bad_topic",
      `"${queue}/${event}" is not a topic: names are 1-64 characters of A-Z a-z 0-9 _ . -`,
    );
  }
  return `${queue}/${event}`;
}

/** `url` with `path` when it has none; throws on a scheme other than ws(s). */
function endpoint(url, path) {
  const parsed = new URL(url);
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`shardq: ${url} is not a ws:// or wss:// URL`);
  }
  if (parsed.pathname === "/" || parsed.pathname === "") parsed.pathname = path;
  return parsed.toString();
}

/** 32 random bytes as 64 lowercase hex characters (a handshake nonce). */
function randomNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * One logical connection to a list of nodes: dials, authenticates with the
 * token, and reconnects after a failure. The base of {@link Subscriber} and
 * {@link Publisher}; not constructed directly.
 *
 * States, reported to `onstate(state, detail)` and as a `state` event
 * (`event.detail` = `{state, ...detail}`):
 * - `connecting` (`{url}`): dialling and authenticating;
 * - `open` (`{url, node}`): authenticated (`node` is the node's id);
 * - `closed` (`{url, code, reason, error?, retryInMs?, final?}`): the
 *   connection is gone; `retryInMs` says when the next attempt is, `final`
 *   that {@link Connection#close} was called. `error` is a
 *   {@link ShardqError} when the node said why (e.g. `auth_failed`).
 */
export class Connection extends EventTarget {
  /**
   * @param {ClientOptions} options
   * @param {string} path the endpoint added to URLs without a path
   */
  constructor(options, path) {
    super();
    const { urls, token, name, onstate, backoff = {}, handshakeTimeoutMs = 10000 } = options ?? {};
    if (!Array.isArray(urls) || urls.length === 0) {
      throw new TypeError("shardq: give urls, a non-empty list of ws:// or wss:// URLs");
    }
    if (typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("shardq: give a token: a string, or a function returning one");
    }
    /** @type {string[]} the URLs, with their endpoint path */
    this.urls = urls.map((url) => endpoint(url, path));
    /** @type {string} `connecting`, `open` or `closed` */
    this.state = "closed";
    this._token = token;
    this._name = name;
    this._onstate = onstate;
    this._backoff = { initialMs: 250, maxMs: 10000, factor: 2, ...backoff };
    this._handshakeTimeoutMs = handshakeTimeoutMs;
    this._next = 0;
    this._attempt = 0;
    this._ws = null;
    this._retry = null;
    this._closed = false;
    this._nextId = 1;
    // Dial once the caller had a chance to add listeners.
    queueMicrotask(() => this._dial());
  }

  /** Closes the connection for good: no reconnection. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._retry);
    this._onClose();
    if (this._ws) {
      this._ws.close(1000, "closed by the client");
    } else {
      this._setState("closed", { final: true });
    }
  }

  /** Whether the connection is authenticated now. */
  get isOpen() {
    return this.state === "open";
  }

  /** A fresh request id. */
  _id() {
    return this._nextId++;
  }

  /** Sends a frame (an object, or JSON text) on the open connection. */
  _send(frame) {
    this._ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  _setState(state, detail = {}) {
    this.state = state;
    try {
      this._onstate?.(state, detail);
    } finally {
      this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
    }
  }

  async _dial() {
    if (this._closed) return;
    const url = this.urls[this._next % this.urls.length];
    this._setState("connecting", { url });
    let token;
    try {
      token = typeof this._token === "function" ? await this._token() : this._token;
      if (typeof token !== "string" || token === "") {
        throw new Error("it returned no token");
      }
    } catch (error) {
      const reason = `cannot get a token: ${error?.message ?? error}`;
      this._lost({ url, code: 0, reason, error: new ShardqError("token", reason) });
      return;
    }
    if (this._closed) return;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this._lost({ url, code: 0, reason: String(error?.message ?? error) });
      return;
    }
    this._ws = ws;
    let phase = "hello";
    let node = null;
    let error = null;
    const fail = (code, message, errorCode) => {
      error = new ShardqError(errorCode, message);
      ws.close(code, message.slice(0, 120));
    };
    const timer = setTimeout(
      () => fail(4002, "no welcome within the handshake timeout", "handshake_timeout"),
      this._handshakeTimeoutMs,
    );
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      let frame;
      try {
        frame = typeof event.data === "string" ? JSON.parse(event.data) : null;
      } catch {
        frame = null;
      }
      if (frame === null || typeof frame !== "object") {
        fail(4003, "the node sent a frame that is not a JSON object", "bad_frame");
        return;
      }
      if (phase === "open") {
        this._onFrame(frame);
      } else if (frame.type === "error") {
        // The close follows (4001 for authentication failures).
        error = new ShardqError(frame.code, frame.message ?? frame.code);
      } else if (phase === "hello" && frame.type === "hello") {
        if (frame.version !== VERSION) {
          fail(4003, `the node speaks ${frame.version}, not ${VERSION}`, "unsupported_version");
          return;
        }
        let nonce = randomNonce();
        while (nonce === String(frame.nonce).toLowerCase()) nonce = randomNonce();
        const auth = { type: "auth", nonce, token };
        if (this._name) auth.node = this._name;
        node = frame.node;
        phase = "auth";
        this._send(auth);
      } else if (phase === "auth" && frame.type === "welcome") {
        clearTimeout(timer);
        phase = "open";
        this._attempt = 0;
        this._setState("open", { url, node });
        this._onOpen();
      } else {
        fail(4003, `unexpected ${frame.type} frame during the handshake`, "bad_frame");
      }
    };
    ws.onerror = () => {}; // a close event follows, with its code
    ws.onclose = (event) => {
      clearTimeout(timer);
      if (this._ws !== ws) return;
      this._ws = null;
      const detail = {
        url,
        code: event.code,
        reason: event.reason || CLOSE_CODES[event.code] || "",
      };
      if (error) detail.error = error;
      if (phase === "open") this._onDrop(event.code);
      this._next += 1; // the next attempt goes to the next URL
      this._lost(detail);
    };
  }

  /** After a connection failed or dropped: wait (backoff), dial again. */
  _lost(detail) {
    if (this._closed) {
      this._setState("closed", { ...detail, final: true });
      return;
    }
    const { initialMs, maxMs, factor } = this._backoff;
    const ceiling = Math.min(maxMs, initialMs * factor ** this._attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this._attempt += 1;
    this._setState("closed", { ...detail, retryInMs: delay });
    this._retry = setTimeout(() => this._dial(), delay);
  }

  /** Called once authenticated. */
  _onOpen() {}

  /** Called with every frame after the handshake. */
  _onFrame(_frame) {}

  /** Called when an authenticated connection is gone, with the close code. */
  _onDrop(_code) {}

  /** Called by {@link Connection#close}. */
  _onClose() {}
}
