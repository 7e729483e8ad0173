// The app dashboard: a live counter of one topic's messages, its last 10
// records, the connection's state and a button that publishes a test
// record, all through /shardq.js. /config.json says where the cluster is
// and carries a token minted for this page (a fresh one per request).

import { Publisher, Subscriber } from "/shardq.js";

const $ = (id) => document.getElementById(id);
const MAX_RECORDS = 10;
const MAX_NOTICES = 20;

let count = 0;
let gaps = 0;

/** Fetches /config.json: {consumers, producers, http, token, queue, event}. */
async function loadConfig() {
  const response = await fetch("/config.json", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`/config.json answered ${response.status}: ${await response.text()}`);
  }
  return response.json();
}

/** Shows the state: `connected` only while the subscription is live. */
function showState(state, detail = "") {
  $("state").textContent = state;
  $("state").dataset.state = state;
  $("state-detail").textContent = detail;
}

function notice(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("notices").prepend(item);
  while ($("notices").children.length > MAX_NOTICES) $("notices").lastElementChild.remove();
}

function addRecord(message) {
  const row = document.createElement("tr");
  row.dataset.offset = String(message.offset);
  const cells = [
    message.offset,
    message.epoch,
    JSON.stringify(message.payload),
    new Date().toLocaleTimeString(),
  ];
  cells.forEach((value, i) => {
    const cell = document.createElement("td");
    if (i === 2) cell.className = "payload";
    cell.textContent = String(value);
    row.append(cell);
  });
  const body = $("records").tBodies[0];
  body.prepend(row);
  while (body.rows.length > MAX_RECORDS) body.lastElementChild.remove();
}

function onEvent(event) {
  switch (event.type) {
    case "message":
      // shardq.js drops duplicates, so a resume never counts twice.
      count += 1;
      $("count").textContent = String(count);
      addRecord(event);
      break;
    case "subscribed":
      showState("connected", !event.resumed ? "" : event.recovered ? "resumed, nothing missed" : "resumed");
      break;
    case "gap":
      gaps += 1;
      $("gaps").textContent = String(gaps);
      notice(
        "gap",
        `gap: messages after ${event.after.epoch}:${event.after.offset} up to ` +
          `${event.epoch}:${event.offset} ` +
          (event.reason === "resume" ? "were not replayed (the history no longer held them)" : "may be missing"),
      );
      break;
    case "stalled":
      notice("stalled", `stalled: the consumer lost the topic's owner ${event.owner ?? ""}`);
      break;
    case "resumed":
      notice("resumed", "resumed: the stream flows again");
      break;
    case "error":
      notice("error", `subscription refused: ${event.code}: ${event.message}`);
      if (!event.retrying) showState("refused", event.code);
      break;
    default:
      break;
  }
}

function onSubscriberState(state, detail) {
  if (state === "connecting") showState("connecting", detail.url);
  if (state === "open") showState("subscribing", `on ${detail.node}`);
  if (state === "closed") {
    const why = detail.error ? `${detail.error.code}: ${detail.error.message}` : detail.reason;
    const retry = detail.retryInMs === undefined ? "" : `, retrying in ${detail.retryInMs} ms`;
    showState("disconnected", `${why || `code ${detail.code}`}${retry}`);
    if (detail.code !== undefined) notice("closed", `connection closed (${detail.code} ${why})`);
  }
}

async function main() {
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    showState("disconnected", String(error.message ?? error));
    return;
  }
  const { queue, event } = config;
  $("topic").textContent = `${queue}/${event}`;
  // The first connection uses the token config.json came with; every
  // reconnection asks for a fresh one, so short-lived tokens never expire
  // under the page.
  let first = config.token;
  const token = async () => {
    const fresh = first ?? (await loadConfig()).token;
    first = undefined;
    return fresh;
  };

  const subscriber = new Subscriber({
    urls: config.consumers,
    token,
    onstate: onSubscriberState,
  });
  subscriber.subscribe(queue, event, onEvent);

  if (config.http?.length) {
    $("http-example").textContent =
      `curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" ` +
      `-d '{"id":1}' ${config.http[0]}/v1/topics/${queue}/${event}`;
    $("http-hint").hidden = false;
  }
  if (!config.producers?.length) {
    $("publish-result").textContent = "no producer in the cluster file";
    return;
  }
  const publisher = new Publisher({ urls: config.producers, token });
  const button = $("publish");
  button.disabled = false;
  button.addEventListener("click", async () => {
    const record = { id: Math.floor(Math.random() * 1e6), name: "test record", at: new Date().toISOString() };
    $("publish-result").textContent = "publishing…";
    try {
      const ack = await publisher.publish(queue, event, record);
      $("publish-result").textContent = `acked at offset ${ack.offset}`;
    } catch (error) {
      $("publish-result").textContent = `refused: ${error.code}: ${error.message}`;
    }
  });
}

main();
