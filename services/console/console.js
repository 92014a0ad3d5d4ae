// The site console: asks /api/overview with the officer's bearer token and fills the
// tables. Every value is written as text (never as HTML), since queries and refusal
// reasons come from requests the site received.
"use strict";

const byId = (id) => document.getElementById(id);

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  row.appendChild(td);
}

function fill(table, rows, columns) {
  const body = byId(table).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    for (const column of columns) cell(row, typeof column === "function" ? column(item) : item[column]);
    body.appendChild(row);
  }
}

const number = (value) => String(Number(Number(value).toPrecision(4)));
const time = (entry) => entry.at.slice(0, 19).replace("T", " ");

function show(overview) {
  byId("site").textContent = "site " + overview.site;
  fill("budgets", overview.budgets, ["dataset", (b) => number(b.epsilon),
    (b) => number(b.spent_epsilon), (b) => number(Math.max(b.epsilon - b.spent_epsilon, 0)),
    (b) => number(b.delta), (b) => number(b.spent_delta), "releases"]);
  const chain = byId("chain");
  chain.className = overview.chain.intact ? "intact" : "broken";
  chain.textContent = overview.chain.intact
    ? "Hash chain intact: " + overview.chain.entries + " entries verified."
    : "Hash chain BROKEN: " + overview.chain.problem;
  fill("refusals", overview.refusals, ["index", time, "analyst", "backend", "query", "detail"]);
  fill("entries", overview.entries, ["index", time, "analyst", "backend", "epsilon", "delta",
    "outcome", "query", "detail"]);
  byId("login").hidden = true;
  byId("console").hidden = false;
}

async function open(event) {
  event.preventDefault();
  const token = byId("token").value;
  const error = byId("login-error");
  try {
    const reply = await fetch("/api/overview", { headers: { Authorization: "Bearer " + token } });
    if (!reply.ok) {
      error.textContent = reply.status === 401 ? "Unknown token." : (await reply.text()).trim();
      return;
    }
    show(await reply.json());
  } catch (failure) {
    error.textContent = "The site did not answer: " + failure.message;
  }
}

byId("login").addEventListener("submit", open);
