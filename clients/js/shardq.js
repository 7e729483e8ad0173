/**
 * shardq.js: a dependency-free browser client for shardq/1 over WebSocket
 * (docs/PROTOCOL.md), as an ES module with no build step.
 *
 * - {@link Subscriber} subscribes to topics on consumers, keeps the last
 *   position of every topic, drops duplicates (PROTOCOL 5.3), reconnects by
 *   itself (the next URL of its list, exponential backoff with jitter) and
 *   resumes where it left off; what the cluster could not replay is reported
 *   as an explicit `gap` event, never hidden.
 * - {@link Publisher} publishes to producers; each publish resolves with
 *   the position its topic's owner sequenced it at, or rejects with a
 *   {@link ShardqError} carrying the protocol's error code.
 *
 * Browsers authenticate with a signed token (PROTOCOL 3.1: `auth.token`, no
 * proof): give a string, or a function returning a fresh one (it is called
 * at every connection and reconnection, so short-lived tokens work). Nodes
 * accept tokens over `wss://` only, unless the cluster file sets
 * `[tokens] allow_plaintext = true` (development).
 *
 * Payloads are JSON values: integers beyond 2^53 lose precision in
 * JavaScript, as with any JSON in a browser.
 *
 * @module shardq
 */

/** The protocol version this client speaks (the `hello` frame's `version`). */
export const VERSION = "shardq/1";

/**
 * WebSocket close codes and what they mean (PROTOCOL 7; 1006 is the
 * browser's own code for a connection lost without a close frame).
 * @type {Readonly<Record<number, string>>}
 */
export const CLOSE_CODES = Object.freeze({
  1000: "normal",
  1001: "going away",
  1006: "connection lost",
  1009: "frame too large",
  4001: "auth failed",
  4002: "handshake timeout",
  4003: "protocol error",
  4004: "topic refused",
  4008: "slow consumer",
  4009: "ping timeout",
  4010: "resync",
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

/** Checks a queue and event name; returns the topic `queue/event`. */
function topicOf(queue, event, allowWildcard) {
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

/**
 * @typedef {object} SubscriberEvent what a subscription's callback receives:
 * - `{type: "message", topic, epoch, offset, payload}`: a message, once;
 * - `{type: "subscribed", topic, epoch, offset, resumed, recovered?, replay?}`:
 *   the subscription is live on a connection (after every (re)connection);
 *   `offset` is the topic's latest offset then;
 * - `{type: "gap", topic, after, epoch, offset, reason}`: messages after
 *   `after` may be missing; the stream goes on after (`epoch`, `offset`).
 *   `reason` is `notice` (the node's `gap` frame) or `resume` (a resume
 *   answered `recovered: false`: what came after `after` up to
 *   (`epoch`, `offset`) was not replayed);
 * - `{type: "stalled", topic, owner}` and `{type: "resumed", topic}`: the
 *   node relaying the topic lost, then found again, the topic's owner;
 * - `{type: "error", topic, code, message, retrying}`: a (re)subscription
 *   was refused; unless `retrying`, the subscription is dropped.
 * @typedef {Record<string, any>} SubscriberEventFields
 */

/**
 * One subscription of a {@link Subscriber}: an exact topic, or `queue/*`
 * (each of the queue's events, resumed one by one after a reconnection).
 */
export class Subscription {
  constructor(subscriber, topic, since, onEvent) {
    /** @type {string} the topic or pattern subscribed */
    this.topic = topic;
    this._subscriber = subscriber;
    this._onEvent = onEvent;
    /** @type {Map<string, Position>} the last position of each topic */
    this.positions = new Map();
    if (since) this.positions.set(topic, { epoch: since.epoch, offset: since.offset });
    this._active = true;
    /**
     * @type {Promise<object>} resolves with the first `subscribed` event,
     *   rejects with a {@link ShardqError} when the subscription is refused
     */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // a refusal is also an `error` event
  }

  /**
   * The last position received of `topic` (this subscription's own topic
   * by default), or `undefined` before any.
   * @param {string} [topic]
   * @returns {Position | undefined}
   */
  position(topic = this.topic) {
    const position = this.positions.get(topic);
    return position && { ...position };
  }

  /**
   * Ends the subscription; resolves once the node acknowledged (at once
   * when not connected). No event is delivered after the call.
   * @returns {Promise<void>}
   */
  unsubscribe() {
    return this._subscriber._unsubscribe(this);
  }

  _emit(event) {
    if (!this._active) return;
    try {
      this._onEvent(event);
    } catch (error) {
      // A failing callback must not break the connection.
      setTimeout(() => {
        throw error;
      });
    }
  }
}

/**
 * Subscribes to topics on consumers (`/v1/subscribe`), resuming after every
 * reconnection from the last position received, without duplicates.
 *
 * @example
 * const subscriber = new Subscriber({ urls: ["wss://consumer-0:7100"], token });
 * subscriber.subscribe("database", "create", (event) => {
 *   if (event.type === "message") console.log(event.offset, event.payload);
 * });
 */
export class Subscriber extends Connection {
  /** @param {ClientOptions} options consumer URLs, token, ... */
  constructor(options) {
    super(options, "/v1/subscribe");
    /** @type {Map<string, Subscription>} by topic or pattern */
    this._subscriptions = new Map();
    /** @type {Map<string, Subscription>} by exact topic */
    this._byTopic = new Map();
    /** @type {Map<number, object>} requests in flight, by id */
    this._pending = new Map();
  }

  /**
   * Subscribes to `queue/event` (`event` `*`: every event of the queue).
   *
   * @param {string} queue
   * @param {string} event an event name, or `*`
   * @param {{since?: Position} | ((event: object) => void)} options `since`
   *   resumes after a position received earlier (exact topics only); may be
   *   left out
   * @param {(event: object) => void} [onEvent] receives every event (see
   *   {@link SubscriberEvent})
   * @returns {Subscription}
   * @throws {ShardqError} `bad_topic`, `already_subscribed`, `bad_frame`
   *   (`since` with `*`), `closed`
   */
  subscribe(queue, event, options, onEvent) {
    if (typeof options === "function") [options, onEvent] = [{}, options];
    const { since } = options ?? {};
    if (typeof onEvent !== "function") throw new TypeError("shardq: give a callback for the events");
    if (this._closed) throw new ShardqError("closed", "the subscriber is closed");
    const topic = topicOf(queue, event, true);
    if (this._subscriptions.has(topic) || this._byTopic.has(topic)) {
      throw new ShardqError("already_subscribed", `already subscribed to ${topic}`);
    }
    if (since !== undefined) {
      if (event === "*") throw new ShardqError("bad_frame", "since needs an exact topic, not queue/*");
      if (!Number.isSafeInteger(since?.epoch) || !Number.isSafeInteger(since?.offset)) {
        throw new ShardqError("bad_frame", "since must be {epoch, offset} with integers");
      }
    }
    const subscription = new Subscription(this, topic, since, onEvent);
    this._subscriptions.set(topic, subscription);
    if (event !== "*") this._byTopic.set(topic, subscription);
    if (this.isOpen) this._sendSubscribe(subscription);
    return subscription;
  }

  /** Sends what makes `subscription` live: with `since` where known. */
  _sendSubscribe(subscription) {
    if (!subscription._active) return;
    const wildcard = subscription.topic.endsWith("/*");
    if (wildcard && subscription.positions.size === 0) {
      this._request({ type: "subscribe", topic: subscription.topic }, { subscription });
      return;
    }
    const topics = wildcard ? [...subscription.positions.keys()] : [subscription.topic];
    for (const topic of topics) {
      const since = subscription.positions.get(topic);
      const frame = { type: "subscribe", topic };
      if (since) frame.since = since;
      this._request(frame, { subscription, since });
    }
  }

  _request(frame, pending) {
    const id = this._id();
    this._pending.set(id, { ...pending, frame });
    this._send({ ...frame, id });
  }

  _unsubscribe(subscription) {
    if (!subscription._active) return Promise.resolve();
    subscription._active = false;
    this._subscriptions.delete(subscription.topic);
    for (const [topic, owner] of this._byTopic) {
      if (owner === subscription) this._byTopic.delete(topic);
    }
    subscription._reject(new ShardqError("not_subscribed", "unsubscribed before it went live"));
    if (!this.isOpen) return Promise.resolve();
    return new Promise((resolve) => {
      this._request({ type: "unsubscribe", topic: subscription.topic }, { resolve });
    });
  }

  _onOpen() {
    for (const subscription of this._subscriptions.values()) this._sendSubscribe(subscription);
  }

  _onDrop() {
    // Subscribes in flight are sent again on the next connection;
    // unsubscribes are done: the connection that held them is gone.
    for (const pending of this._pending.values()) pending.resolve?.();
    this._pending.clear();
  }

  _onClose() {
    for (const subscription of this._subscriptions.values()) {
      subscription._reject(new ShardqError("closed", "the subscriber is closed"));
    }
  }

  _onFrame(frame) {
    switch (frame.type) {
      case "message":
        this._onMessage(frame);
        break;
      case "ack":
      case "error":
        this._onAnswer(frame);
        break;
      case "gap": {
        const subscription = this._byTopic.get(frame.topic);
        if (!subscription) break;
        subscription.positions.set(frame.topic, { epoch: frame.epoch, offset: frame.offset });
        const { topic, after, epoch, offset } = frame;
        subscription._emit({ type: "gap", topic, after, epoch, offset, reason: "notice" });
        break;
      }
      case "stalled":
      case "resumed": {
        const subscription = this._byTopic.get(frame.topic);
        const event = { type: frame.type, topic: frame.topic };
        if (frame.owner !== undefined) event.owner = frame.owner;
        subscription?._emit(event);
        break;
      }
      default:
        break; // frames of newer nodes
    }
  }

  _onMessage(frame) {
    const subscription = this._byTopic.get(frame.topic);
    if (!subscription) return;
    const last = subscription.positions.get(frame.topic);
    // PROTOCOL 5.3: same epoch and an offset not greater is a duplicate.
    if (last && frame.epoch === last.epoch && frame.offset <= last.offset) return;
    subscription.positions.set(frame.topic, { epoch: frame.epoch, offset: frame.offset });
    const { topic, epoch, offset, payload } = frame;
    subscription._emit({ type: "message", topic, epoch, offset, payload });
  }

  _onAnswer(frame) {
    const pending = this._pending.get(frame.id);
    if (!pending) return;
    this._pending.delete(frame.id);
    if (pending.resolve) {
      pending.resolve(); // an unsubscribe: done either way
      return;
    }
    const { subscription, since } = pending;
    if (!subscription._active) return;
    if (frame.type === "error") {
      this._refused(subscription, pending, frame);
      return;
    }
    for (const live of frame.topics ?? []) {
      this._live(subscription, live, since, frame);
    }
  }

  /** A subscribe was acknowledged for `live.topic`. */
  _live(subscription, live, since, ack) {
    const { topic } = live;
    if (subscription.topic.endsWith("/*")) this._byTopic.set(topic, subscription);
    const event = { type: "subscribed", topic, epoch: live.epoch, offset: live.offset };
    event.resumed = since !== undefined;
    if (since === undefined) {
      subscription.positions.set(topic, { epoch: live.epoch, offset: live.offset });
    } else {
      event.recovered = ack.recovered !== false;
      if (ack.replay) event.replay = ack.replay;
      if (ack.recovered === false && ack.replay) {
        const { replay } = ack;
        subscription.positions.set(topic, { epoch: replay.epoch, offset: replay.offset });
        // A since beyond the topic's end misses nothing: the position just
        // moves back (PROTOCOL 5.3).
        const behind = replay.epoch === since.epoch && replay.offset <= since.offset;
        if (!behind) {
          subscription._emit({
            type: "gap",
            topic,
            after: { ...since },
            epoch: replay.epoch,
            offset: replay.offset,
            reason: "resume",
          });
        }
      }
    }
    subscription._emit(event);
    subscription._resolve(event);
  }

  _refused(subscription, pending, frame) {
    const topic = pending.frame.topic;
    const error = new ShardqError(frame.code, frame.message ?? frame.code);
    // The owner could not be reached in time: try again while connected.
    const retrying = frame.code === "unavailable";
    subscription._emit({ type: "error", topic, code: frame.code, message: error.message, retrying });
    if (retrying) {
      const connection = this._ws;
      setTimeout(() => {
        if (this._ws === connection && this.isOpen && subscription._active) {
          this._request(pending.frame, { subscription, since: subscription.positions.get(topic) });
        }
      }, 1000);
      return;
    }
    subscription._active = false;
    this._subscriptions.delete(subscription.topic);
    for (const [name, owner] of this._byTopic) {
      if (owner === subscription) this._byTopic.delete(name);
    }
    subscription._reject(error);
  }
}

/**
 * @typedef {object} PublishAck where the topic's owner sequenced a publish
 * @property {number} epoch
 * @property {number} offset
 * @property {boolean} duplicate true when the publish's `key` was seen
 *   before: the position is the first publish's, nothing new was sequenced
 */

/**
 * Publishes to producers (`/v1/publish`).
 *
 * What a rejection's `code` says about the message (PROTOCOL 5.1):
 * - `outcome_unknown`: it was sent but no answer came: the connection
 *   dropped first, or no answer within `timeoutMs`. It may or may not have
 *   been sequenced: publish it again with the same `key` to find out (the
 *   owner answers a key it remembers with the first position and
 *   `duplicate: true`; keys are remembered for 60 s).
 * - `unavailable`: certainly not sequenced (the owner is unreachable, or it
 *   was never sent before `timeoutMs`, or the publisher was closed). Safe
 *   to retry.
 * - `shutting_down`: the producer is stopping and did not process it.
 * - `bad_topic`, `unknown_queue`, `unknown_event`, `not_authorized`,
 *   `payload_too_large`, `bad_frame`: refused; retrying is useless.
 *
 * Publishes made while disconnected wait for the next connection (up to
 * `timeoutMs`). Publishes sent on a connection the producer closed with
 * 1001 (going away) were never read (PROTOCOL 5.1): they are sent again on
 * the next connection.
 *
 * @example
 * const publisher = new Publisher({ urls: ["wss://producer-0:7000"], token });
 * const { epoch, offset } = await publisher.publish("database", "create", { id: 99 });
 */
export class Publisher extends Connection {
  /**
   * @param {ClientOptions & {timeoutMs?: number}} options producer URLs,
   *   token, ...; `timeoutMs` (10000): how long a publish may wait for its
   *   connection and its answer
   */
  constructor(options) {
    super(options, "/v1/publish");
    this._timeoutMs = options.timeoutMs ?? 10000;
    /** Publishes not sent yet, in order. */
    this._queue = [];
    /** @type {Map<number, object>} publishes sent, by id */
    this._inflight = new Map();
  }

  /**
   * Publishes `payload` (any JSON value) to `queue/event`.
   *
   * @param {string} queue
   * @param {string} event
   * @param {any} payload
   * @param {{key?: string}} [options] `key`: an idempotency key, 1-64
   *   characters of A-Z a-z 0-9 . _ : -
   * @returns {Promise<PublishAck>} rejects with a {@link ShardqError}
   */
  publish(queue, event, payload, options = {}) {
    return new Promise((resolve, reject) => {
      const topic = topicOf(queue, event, false);
      if (this._closed) throw new ShardqError("unavailable", "the publisher is closed");
      const text = JSON.stringify(payload);
      if (text === undefined) throw new ShardqError("bad_frame", "the payload is not a JSON value");
      const key = options.key == null ? "" : `,"key":${JSON.stringify(String(options.key))}`;
      const publish = { topic, head: `"topic":${JSON.stringify(topic)}${key}`, text, resolve, reject };
      publish.timer = setTimeout(() => this._expire(publish), this._timeoutMs);
      this._queue.push(publish);
      this._flush();
    });
  }

  _flush() {
    while (this.isOpen && this._queue.length > 0) {
      const publish = this._queue.shift();
      publish.id = this._id();
      this._inflight.set(publish.id, publish);
      this._send(`{"type":"publish","id":${publish.id},${publish.head},"payload":${publish.text}}`);
    }
  }

  _expire(publish) {
    const waiting = this._queue.indexOf(publish);
    if (waiting >= 0) {
      this._queue.splice(waiting, 1);
      publish.reject(new ShardqError("unavailable", "no connection to a producer within the timeout: not sent"));
    } else if (this._inflight.delete(publish.id)) {
      publish.reject(
        new ShardqError("outcome_unknown", "no answer within the timeout: it may or may not have been sequenced; retry with the same key"),
      );
    }
  }

  _onOpen() {
    this._flush();
  }

  _onFrame(frame) {
    if (frame.type !== "ack" && frame.type !== "error") return;
    const publish = this._inflight.get(frame.id);
    if (!publish) return;
    this._inflight.delete(frame.id);
    clearTimeout(publish.timer);
    if (frame.type === "ack") {
      publish.resolve({ epoch: frame.epoch, offset: frame.offset, duplicate: frame.duplicate === true });
    } else {
      publish.reject(new ShardqError(frame.code, frame.message ?? frame.code));
    }
  }

  _onDrop(code) {
    const sent = [...this._inflight.values()];
    this._inflight.clear();
    if (code === 1001 && !this._closed) {
      // Going away: what it did not answer it never read. Send it again.
      this._queue.unshift(...sent);
      return;
    }
    for (const publish of sent) {
      clearTimeout(publish.timer);
      publish.reject(
        new ShardqError("outcome_unknown", "the connection closed before the answer: it may or may not have been sequenced; retry with the same key"),
      );
    }
  }

  _onClose() {
    for (const publish of this._queue.splice(0)) {
      clearTimeout(publish.timer);
      publish.reject(new ShardqError("unavailable", "the publisher was closed: not sent"));
    }
  }
}
