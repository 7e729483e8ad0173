/**
 * shardq.js: a dependency-free browser client for shardq/1 over WebSocket
 * (docs/PROTOCOL.md), as ES modules with no build step and no dependency:
 * this one and ./connection.js, its transport (clients/js/README.md).
 *
 * - {@link Subscriber}: subscriptions that survive reconnections (the next
 *   URL, exponential backoff with jitter) and resume from the last position
 *   without duplicates (PROTOCOL 5.3); what could not be replayed arrives
 *   as an explicit `gap` event.
 * - {@link Publisher}: each publish resolves with its position, or rejects
 *   with a {@link ShardqError} carrying the protocol's error code.
 *
 * Browsers present a token (PROTOCOL 3.1: `auth.token`, no proof): a
 * string, or a function returning a fresh one at every (re)connection.
 * Nodes take tokens over `wss://` only, unless `[tokens] allow_plaintext`.
 *
 * @module shardq
 */

import { CLOSE_CODES, Connection, RETRY, ShardqError, VERSION, topicOf } from "./connection.js";

export { CLOSE_CODES, Connection, ShardqError, VERSION };

/** @typedef {import("./connection.js").Position} Position */
/** @typedef {import("./connection.js").ClientOptions} ClientOptions */

/**
 * @typedef {object} SubscriberEvent what a subscription's callback gets
 *   (clients/js/README.md has the table): `message` {topic, epoch, offset,
 *   payload}, once each; `subscribed` {topic, epoch, offset, resumed,
 *   recovered?, replay?}, live on a connection; `gap` {topic, after, epoch,
 *   offset, reason: "resume" | "notice"}, messages after `after` may be
 *   missing, the stream goes on after (epoch, offset); `stalled` {topic,
 *   owner} and `resumed` {topic}; `error` {topic, code, message, retrying}.
 * @property {string} type
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

  /** Drops `subscription` here: no event after this. */
  _forget(subscription, error) {
    subscription._active = false;
    this._subscriptions.delete(subscription.topic);
    for (const [topic, owner] of this._byTopic) {
      if (owner === subscription) this._byTopic.delete(topic);
    }
    subscription._reject(error);
  }

  _unsubscribe(subscription) {
    if (!subscription._active) return Promise.resolve();
    this._forget(subscription, new ShardqError("not_subscribed", "unsubscribed before it went live"));
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
          const { epoch, offset } = replay;
          subscription._emit({ type: "gap", topic, after: { ...since }, epoch, offset, reason: "resume" });
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
          this._request(pending.frame, { subscription, since: pending.since });
        }
      }, 1000);
      return;
    }
    this._forget(subscription, error);
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
 * Publishes to producers (`/v1/publish`). A rejection's `code` says what
 * became of the message (PROTOCOL 5.1; clients/js/README.md):
 * `outcome_unknown`: sent, but the connection dropped (or `timeoutMs`
 * passed) before the answer: it may or may not have been sequenced, so
 * publish it again with the same `key`; `unavailable`: certainly not
 * sequenced (owner unreachable, no connection in time, publisher closed),
 * safe to retry; `shutting_down`: not processed; any other code: refused.
 * Publishes made while disconnected wait for the next connection; those a
 * producer closing with 1001 never read are sent again on the next one.
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
      publish.reject(new ShardqError("unavailable", "no producer within the timeout: not sent"));
    } else if (this._inflight.delete(publish.id)) {
      publish.reject(new ShardqError("outcome_unknown", `no answer within the timeout: ${RETRY}`));
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
      publish.reject(new ShardqError("outcome_unknown", `the connection closed first: ${RETRY}`));
    }
  }

  _onClose() {
    for (const publish of this._queue.splice(0)) {
      clearTimeout(publish.timer);
      publish.reject(new ShardqError("unavailable", "the publisher was closed: not sent"));
    }
  }
}
