// emotion-monitor dashboard: connects to ws(s)://<this host>/ws and draws what arrives.
// Plain JavaScript, no libraries, no build step. The wire format is documented in
// docs/protocol.md (streamer/protocol/messages.py is the reference). Values the server and the
// page must agree on (the uncertain label) come in the server's hello, not as copies here; only
// what the page needs before hello is its own: the /ws path and the protocol version it speaks.
// Element ids and data attributes are stable so a browser test can read the page:
//   one stream:  #connection-state, #stream-select, #current-label, #current-confidence,
//                #speech-state, #chart (data-points), #stats, #stream-list li[data-stream]
//   calls:       #call-list li[data-call] .chip[data-stream][data-label],
//                #call-view[data-call] .channel[data-stream] .channel-label[data-label],
//                canvas.channel-chart[data-points], .channel-utterances li[data-label],
//                #alerts li[data-alert-id][data-stream][data-label][data-state]
// A call is the part of a stream name before the first "/" (call-42/agent, call-42/customer);
// a stream without "/" (a file, the microphone) is a call of one channel.
(function () {
  "use strict";

  var PROTOCOL_VERSION = 1;        // the version this page speaks; other frames are skipped
  var EVENTS_PATH = "/ws";         // needed to connect, so before any hello can say it
  var CHART_SPAN_S = 180;          // seconds of stream time shown in a chart, at most
  var MIN_SPAN_S = 30;             // the axis starts this wide and grows with the data
  var MAX_POINTS = 4000;           // per stream, a hard cap whatever the hop
  var MAX_UTTERANCES = 5;          // per channel, newest first
  var MAX_ALERTS = 100;            // in the alerts panel, newest first
  var CALL_LINGER_S = 120;         // an ended call stays listed this long (unless selected)
  var MAX_ENDED_CALLS = 500;       // and at most this many (memory stays bounded)
  var MIN_FRAME_MS = 100;          // at most ten renders a second, however many streams
  var BACKOFF_INITIAL_MS = 500;
  var BACKOFF_MAX_MS = 10000;

  // One colour per label, the same hues as the terminal view (client/watch.py).
  var LABEL_COLOURS = {
    angry: "#c62828", happy: "#b7791f", neutral: "#00838f", sad: "#1565c0",
    fear: "#6a1b9a", surprise: "#2e7d32", disgust: "#8d6e00", calm: "#00695c",
  };
  var PALETTE = ["#2e7d32", "#6a1b9a", "#d84315", "#283593", "#ad1457", "#00695c"];
  var GREY = "#757575";

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    conn: $("connection-state"), select: $("stream-select"), name: $("stream-name"),
    label: $("current-label"), confidence: $("current-confidence"), speech: $("speech-state"),
    streamState: $("stream-state"), lastUpdate: $("last-update"), windowInfo: $("window-info"),
    bars: $("probabilities"), chart: $("chart"), legend: $("legend"), span: $("chart-span"),
    list: $("stream-list"), stats: $("stats"), server: $("server-info"),
    calls: $("call-list"), callsEmpty: $("call-list-empty"), callCount: $("call-count"),
    callView: $("call-view"), callName: $("call-name"), callState: $("call-state"),
    channels: $("channels"), callLegend: $("call-legend"), channelTemplate: $("channel-template"),
    alerts: $("alerts"), alertsEmpty: $("alerts-empty"), alertCount: $("alert-count"),
  };

  var state = {
    hello: null,        // the latest hello
    labels: [],
    uncertain: null,    // hello.uncertain_label: the smoothed label when no class is clear
    streams: new Map(), // name -> stream record, in the order they were first seen
    selected: null,     // the stream shown in "Now"; its call is the call shown
    pinned: false,      // the user (or the URL) chose the selection: never move it for them
    stats: null,
    replaying: false,   // between a hello and this connection's first stats: the backlog
    alerts: [],         // alert records, newest first, at most MAX_ALERTS
    alertIndex: new Map(), // session + "/" + alert_id -> alert record
    maxWall: 0,         // the latest server wall_time seen (to age replayed events)
  };
  var params = new URLSearchParams(location.search);
  var initialStream = params.get("stream");
  var initialCall = params.get("call");
  if (initialStream || initialCall) state.pinned = true;

  function colour(label) {
    if (label === state.uncertain) return GREY;
    var known = LABEL_COLOURS[String(label).toLowerCase()];
    if (known) return known;
    var i = state.labels.indexOf(label);
    if (i < 0) { i = 0; for (var k = 0; k < label.length; k++) i += label.charCodeAt(k); }
    return PALETTE[i % PALETTE.length];
  }

  function callOf(name) {
    var i = name.indexOf("/");
    return i > 0 ? name.slice(0, i) : name;
  }

  function roleOf(name) {
    var i = name.indexOf("/");
    return i > 0 ? name.slice(i + 1) : name;
  }

  function callName(stream) {
    var s = state.streams.get(stream);
    return s ? s.call : callOf(stream);
  }

  // The server names a pushed call's channels in their metadata (ingest): trust that first.
  function placeStream(s, metadata) {
    if (metadata && typeof metadata.call === "string" && metadata.call &&
        typeof metadata.role === "string" && metadata.role) {
      s.call = metadata.call;
      s.role = metadata.role;
    }
  }

  function nowS() { return Date.now() / 1000; }

  function streamRecord(name) {
    var s = state.streams.get(name);
    if (!s) {
      s = { name: name, call: callOf(name), role: roleOf(name), open: true, speaking: false,
            last: null, lastSeq: -1, updatedWall: null, openedWall: null, history: [],
            version: 0, utterances: [], endedAt: null };
      state.streams.set(name, s);
    }
    return s;
  }

  function resetStream(s) {
    s.history = []; s.last = null; s.lastSeq = -1; s.updatedWall = null;
    s.utterances = []; s.version += 1; s.endedAt = null;
  }

  // ---- messages ---------------------------------------------------------------------------

  function onHello(m) {
    var newRun = !state.hello || state.hello.session !== m.session;
    state.hello = m;
    state.replaying = true;
    state.labels = m.labels.slice();
    state.uncertain = typeof m.uncertain_label === "string" ? m.uncertain_label : null;
    var live = new Set(m.streams.map(function (info) { return info.stream; }));
    if (newRun) {
      // a different server run: its sequence numbers, stream times and alert ids start over
      state.streams.clear();
      state.stats = null;
      state.alerts.forEach(function (a) {
        if (a.state !== "end") { a.state = "end"; a.interrupted = true; a.dirty = true; }
      });
    } else {
      // the same run after a reconnect: what is not open now ended while we were away
      state.streams.forEach(function (s) {
        if (s.open && !live.has(s.name)) { s.open = false; s.speaking = false; s.endedAt = nowS(); }
      });
    }
    m.streams.forEach(function (info) {
      var s = streamRecord(info.stream);
      s.open = true;
      placeStream(s, info.metadata);
    });
    el.server.textContent = "model " + m.model + " · window " + m.window_s + " s, hop " +
      m.hop_s + " s · session " + m.session;
    el.span.textContent = String(CHART_SPAN_S);
  }

  function onOpen(m) {
    var s = streamRecord(m.stream);
    if (s.openedWall !== null && s.openedWall !== m.wall_time) {
      resetStream(s); // the name was reused in this run: a new stream, numbers start over
    }
    s.openedWall = m.wall_time; // a stream_open replayed after a reconnect has the same time
    s.open = true;
    s.endedAt = null;
    s.closeReason = null;
    s.windowsDropped = 0;
    placeStream(s, m.metadata);
  }

  function onClose(m) {
    var s = streamRecord(m.stream);
    s.open = false; s.speaking = false;
    // a stream_close replayed after a reconnect ended earlier than now: age it by server time
    if (s.endedAt === null) s.endedAt = nowS() - Math.max(0, state.maxWall - m.wall_time);
    s.closeReason = m.reason;
    // totals of the stream (newer servers): windows the engine dropped show on the channel
    s.windowsDropped = typeof m.windows_dropped === "number" ? m.windows_dropped : 0;
  }

  function onWindow(m) {
    var s = streamRecord(m.stream);
    if (m.seq <= s.lastSeq) return; // a backlog resent after a reconnect
    s.lastSeq = m.seq;
    s.last = m;
    s.updatedWall = m.wall_time;
    s.version += 1;
    s.history.push({ start: m.start_s, end: m.end_s, p: m.probabilities });
    var cutoff = m.end_s - CHART_SPAN_S;
    var drop = 0;
    while (drop < s.history.length && s.history[drop].end < cutoff) drop++;
    if (s.history.length - drop > MAX_POINTS) drop = s.history.length - MAX_POINTS;
    if (drop) s.history.splice(0, drop);
  }

  function onUtterance(m) {
    var s = streamRecord(m.stream);
    var newest = s.utterances[0];
    if (newest && m.end_s <= newest.end_s) return; // a backlog resent after a reconnect
    s.utterances.unshift(m);
    if (s.utterances.length > MAX_UTTERANCES) s.utterances.length = MAX_UTTERANCES;
    s.utterancesVersion = (s.utterancesVersion || 0) + 1;
  }

  function onAlert(m) {
    var session = state.hello ? state.hello.session : "";
    var key = session + "/" + m.alert_id;
    var a = state.alertIndex.get(key);
    if (m.state === "start" || !a) {
      if (a) return; // a backlog resent after a reconnect
      a = { key: key, id: m.alert_id, stream: m.stream, rule: m.rule, label: m.label,
            threshold: m.threshold, for_s: m.for_s, since_s: m.since_s, at_s: m.at_s,
            probability: m.probability, wall_time: m.wall_time, state: "start",
            end: null, interrupted: false, dirty: true };
      state.alertIndex.set(key, a);
      // newest first by server time: a backlog replays stream by stream, not in time order
      var i = 0;
      while (i < state.alerts.length && newer(state.alerts[i], a)) i++;
      state.alerts.splice(i, 0, a);
      while (state.alerts.length > MAX_ALERTS) state.alertIndex.delete(state.alerts.pop().key);
    }
    if (m.state === "end" && !a.end) {
      a.state = "end";
      a.end = { at_s: m.at_s, probability: m.probability, wall_time: m.wall_time };
      a.dirty = true;
    }
  }

  function newer(a, b) {
    return a.wall_time !== b.wall_time ? a.wall_time > b.wall_time : a.id > b.id;
  }

  function handle(m) {
    if (typeof m.wall_time === "number" && m.wall_time > state.maxWall) state.maxWall = m.wall_time;
    switch (m.type) {
      case "hello": onHello(m); break;
      case "window": onWindow(m); break;
      case "speech_start": streamRecord(m.stream).speaking = true; break;
      case "speech_end": streamRecord(m.stream).speaking = false; break;
      case "stream_open": onOpen(m); break;
      case "stream_close": onClose(m); break;
      case "utterance": onUtterance(m); break;
      case "alert": onAlert(m); break;
      case "stats": state.stats = m; state.replaying = false; break;
      case "error": console.warn("server error", m.code, m.message); break;
      default: return; // unknown types are ignored (forward compatible)
    }
    scheduleRender();
  }

  // ---- connection -------------------------------------------------------------------------

  var socket = null;
  var failures = 0;
  var retryTimer = null;

  function setConnection(kind, text) {
    el.conn.dataset.state = kind;
    el.conn.textContent = text;
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + EVENTS_PATH;
  }

  function connect() {
    retryTimer = null;
    setConnection(failures ? "reconnecting" : "connecting",
                  failures ? "reconnecting…" : "connecting…");
    var ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      setConnection("closed", "cannot connect: " + err.message);
      return;
    }
    socket = ws;
    ws.onopen = function () { setConnection("connected", "connected"); };
    ws.onmessage = function (event) {
      var m;
      try { m = JSON.parse(event.data); } catch (err) {
        console.warn("skipping a frame that is not JSON", err); return;
      }
      if (!m || typeof m.type !== "string" || m.v !== PROTOCOL_VERSION) {
        console.warn("skipping a frame of another protocol", m); return;
      }
      if (m.type === "hello") failures = 0;
      try {
        handle(m);
      } catch (err) { // one odd frame must not stop the page
        console.warn("skipping a frame the page cannot use", m.type, err);
      }
    };
    ws.onclose = function (event) {
      if (socket !== ws) return;
      socket = null;
      failures += 1;
      var base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * Math.pow(2, failures - 1));
      var delay = base * (0.5 + 0.5 * Math.random());
      var why = event.code === 1001 ? "server went away" :
        (event.code === 1006 ? "connection lost" : "closed " + event.code);
      setConnection("reconnecting", why + "; reconnecting in " + (delay / 1000).toFixed(1) + " s");
      state.streams.forEach(function (s) { s.speaking = false; }); // unknown while away
      scheduleRender();
      retryTimer = setTimeout(connect, delay);
    };
  }

  // ---- calls ------------------------------------------------------------------------------

  // Calls from the streams: {name, streams (first-seen order), open, endedAt}.
  function collectCalls() {
    var calls = new Map();
    state.streams.forEach(function (s) {
      var c = calls.get(s.call);
      if (!c) {
        c = { name: s.call, streams: [], open: false, endedAt: 0 };
        calls.set(s.call, c);
      }
      c.streams.push(s);
      if (s.open) c.open = true;
      else c.endedAt = Math.max(c.endedAt, s.endedAt || 0);
    });
    return calls;
  }

  var naturally = new Intl.Collator(undefined, { numeric: true });
  function callOrder(a, b) { // live calls first, then by name ("call-2" before "call-10")
    if (a.open !== b.open) return a.open ? -1 : 1;
    return naturally.compare(a.name, b.name);
  }

  // Forget calls that ended long ago, or too many of them (never the selected one).
  function pruneCalls(calls) {
    var keep = state.selected !== null ? callName(state.selected) : null;
    var ended = Array.from(calls.values()).filter(function (c) {
      return !c.open && c.name !== keep;
    }).sort(function (a, b) { return b.endedAt - a.endedAt; });
    var now = nowS();
    ended.forEach(function (c, i) {
      if (i >= MAX_ENDED_CALLS || now - c.endedAt > CALL_LINGER_S) {
        c.streams.forEach(function (s) { state.streams.delete(s.name); });
        calls.delete(c.name);
      }
    });
  }

  function activeAlerts() { // stream -> number of alerts on now
    var on = new Map();
    state.alerts.forEach(function (a) {
      if (a.state !== "end") on.set(a.stream, (on.get(a.stream) || 0) + 1);
    });
    return on;
  }

  // ---- rendering --------------------------------------------------------------------------

  var renderPending = false;
  var lastRenderMs = -Infinity;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    var wait = Math.max(0, lastRenderMs + MIN_FRAME_MS - performance.now());
    setTimeout(function () {
      var done = false;
      var run = function () {
        if (done) return;
        done = true;
        renderPending = false;
        lastRenderMs = performance.now();
        render();
      };
      requestAnimationFrame(run);
      setTimeout(run, 250); // hidden tabs run no animation frames; still keep the page current
    }, wait);
  }

  function fmt(x, digits) { return Number(x).toFixed(digits); }

  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
  function setData(node, key, value) { if (node.dataset[key] !== value) node.dataset[key] = value; }

  function clock(wall) {
    var d = new Date(wall * 1000);
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function renderSelect() {
    var sel = el.select;
    var names = Array.from(state.streams.keys()).sort(naturally.compare);
    var wanted = names.map(function (n) {
      return n + (state.streams.get(n).open ? "" : " (closed)");
    });
    var current = Array.from(sel.options).map(function (o) { return o.textContent; });
    if (names.length === 0) {
      if (sel.options.length !== 1 || sel.options[0].value !== "") {
        sel.innerHTML = "";
        sel.add(new Option("no streams yet", ""));
      }
      sel.disabled = true;
      return;
    }
    if (current.join("\n") !== wanted.join("\n")) {
      sel.innerHTML = "";
      names.forEach(function (n, i) { sel.add(new Option(wanted[i], n)); });
    }
    sel.disabled = false;
    sel.value = state.selected;
  }

  // Which stream is shown: the user's choice, else the URL's, else the first live call.
  function chooseSelection(calls, ordered) {
    if (state.selected !== null && !state.streams.has(state.selected)) state.selected = null;
    if (state.selected === null && initialStream && state.streams.has(initialStream)) {
      state.selected = initialStream;
    }
    if (state.selected === null && initialCall && calls.has(initialCall)) {
      state.selected = calls.get(initialCall).streams[0].name;
    }
    // Mid-backlog, a call not replayed to its end yet looks live: choose by default only
    // once the backlog is in (the first stats frame), so a reload shows what was shown.
    if (state.replaying) return;
    var current = state.selected !== null ? calls.get(callName(state.selected)) : null;
    if (state.selected === null || (!state.pinned && current && !current.open)) {
      // nothing chosen yet, or the call shown by default ended: follow a live call
      var pick = ordered.length ? ordered[0] : null;
      if (pick && (state.selected === null || pick.open)) state.selected = pick.streams[0].name;
    }
  }

  function renderCurrent(s) {
    el.name.textContent = s ? "· " + s.name : "";
    var m = s && s.last;
    var label = m ? m.smoothed_label : "";
    if (el.label.dataset.label !== label) {   // aria-live: announce changes only
      el.label.dataset.label = label;
      el.label.textContent = m ? label : "—";
      el.label.style.color = m ? colour(label) : GREY;
    }
    el.confidence.textContent = m ? fmt(m.smoothed_confidence, 2) : "—";
    el.confidence.dataset.value = m ? String(m.smoothed_confidence) : "";
    var speaking = !!(s && s.speaking);
    el.speech.dataset.speaking = String(speaking);
    el.speech.querySelector(".text").textContent = speaking ? "speaking" : "quiet";
    el.streamState.dataset.open = s ? String(s.open) : "";
    el.streamState.textContent = s ? (s.open ? "stream open" : "stream closed") : "—";
    el.windowInfo.textContent = m
      ? "#" + m.seq + " · " + fmt(m.start_s, 1) + "–" + fmt(m.end_s, 1) + " s · raw " +
        m.label + " " + fmt(m.confidence, 2)
      : "";
    renderAge(s);

    var labels = state.labels;
    if (el.bars.children.length !== labels.length ||
        el.bars.dataset.labels !== labels.join("\n")) {
      el.bars.innerHTML = "";
      el.bars.dataset.labels = labels.join("\n");
      labels.forEach(function (name) {
        var li = document.createElement("li");
        li.dataset.label = name;
        li.innerHTML = '<span class="name"></span><span class="track" aria-hidden="true">' +
          '<span class="fill"></span></span><span class="value"></span>';
        li.querySelector(".name").textContent = name;
        li.querySelector(".fill").style.background = colour(name);
        el.bars.appendChild(li);
      });
      renderLegend(el.legend);
      renderLegend(el.callLegend);
    }
    Array.from(el.bars.children).forEach(function (li) {
      var p = m && m.probabilities[li.dataset.label];
      var has = typeof p === "number";
      li.querySelector(".fill").style.width = has ? (100 * p).toFixed(1) + "%" : "0";
      li.querySelector(".value").textContent = has ? fmt(p, 2) : "—";
      li.dataset.value = has ? String(p) : "";
    });
  }

  function renderAge(s) {
    if (!s || s.updatedWall === null) {
      el.lastUpdate.textContent = "no windows yet";
      el.lastUpdate.dataset.wallTime = "";
      return;
    }
    var age = Math.max(0, nowS() - s.updatedWall);
    el.lastUpdate.dataset.wallTime = String(s.updatedWall);
    el.lastUpdate.textContent = "updated " + (age < 60 ? fmt(age, 0) + " s" :
      fmt(age / 60, 0) + " min") + " ago";
  }

  function renderLegend(list) {
    list.innerHTML = "";
    state.labels.forEach(function (name) {
      var li = document.createElement("li");
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour(name);
      li.appendChild(sw);
      li.appendChild(document.createTextNode(name));
      list.appendChild(li);
    });
  }

  // Keep a list's children in the given order, creating and removing them by key.
  function reconcile(list, keys, nodes, make) {
    var wanted = new Set(keys);
    nodes.forEach(function (node, key) {
      if (!wanted.has(key)) { node.remove(); nodes.delete(key); }
    });
    keys.forEach(function (key, i) {
      var node = nodes.get(key);
      if (!node) { node = make(key); nodes.set(key, node); }
      if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
    });
  }

  var streamNodes = new Map();
  function renderList() {
    var names = Array.from(state.streams.keys()).sort(naturally.compare);
    reconcile(el.list, names, streamNodes, function (name) {
      var li = document.createElement("li");
      li.dataset.stream = name;
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = name;
      var chip = document.createElement("span");
      chip.className = "chip";
      b.appendChild(chip);
      b.addEventListener("click", function () { select(name); });
      li.appendChild(b);
      return li;
    });
    streamNodes.forEach(function (li, name) {
      var s = state.streams.get(name);
      var label = s.last ? s.last.smoothed_label : "";
      setData(li, "label", label);
      var b = li.firstChild;
      b.setAttribute("aria-pressed", String(name === state.selected));
      b.classList.toggle("closed", !s.open);
      var chip = b.querySelector(".chip");
      setText(chip, label || "—");
      chip.style.color = label ? colour(label) : GREY;
    });
  }

  var callNodes = new Map();
  function renderCalls(ordered, alertsOn) {
    reconcile(el.calls, ordered.map(function (c) { return c.name; }), callNodes, function (name) {
      var li = document.createElement("li");
      li.dataset.call = name;
      var b = document.createElement("button");
      b.type = "button";
      b.className = "call";
      b.innerHTML = '<span class="call-title"></span> <span class="call-status"></span>' +
        '<span class="chips"></span>';
      b.querySelector(".call-title").textContent = name;
      b.addEventListener("click", function () { selectCall(name); });
      li.appendChild(b);
      return li;
    });
    var shown = state.selected !== null ? callName(state.selected) : null;
    var live = 0;
    ordered.forEach(function (c) {
      if (c.open) live += 1;
      var li = callNodes.get(c.name);
      var alerting = c.streams.some(function (s) { return alertsOn.has(s.name); });
      setData(li, "open", String(c.open));
      setData(li, "alert", String(alerting));
      setData(li, "channels", String(c.streams.length));
      var b = li.firstChild;
      b.setAttribute("aria-pressed", String(c.name === shown));
      setText(b.querySelector(".call-status"), c.open ? (alerting ? "alert" : "live") : "ended");
      var chips = b.querySelector(".chips");
      var keys = c.streams.map(function (s) { return s.name; });
      if (chips.dataset.streams !== keys.join("\n")) {
        chips.dataset.streams = keys.join("\n");
        chips.innerHTML = "";
        c.streams.forEach(function (s) {
          var chip = document.createElement("span");
          chip.className = "chip";
          chip.dataset.stream = s.name;
          chip.innerHTML = '<span class="role"></span> <span class="chip-label"></span>';
          chip.querySelector(".role").textContent = s.role;
          chips.appendChild(chip);
        });
      }
      c.streams.forEach(function (s, i) {
        var chip = chips.children[i];
        var label = s.last ? s.last.smoothed_label : "";
        setData(chip, "label", label);
        setData(chip, "open", String(s.open));
        setData(chip, "speaking", String(s.speaking));
        var text = chip.querySelector(".chip-label");
        setText(text, label || "—");
        chip.style.setProperty("--chip", label ? colour(label) : GREY);
      });
    });
    setData(el.callCount, "live", String(live));
    setData(el.callCount, "ended", String(ordered.length - live));
    setText(el.callCount, ordered.length ? live + " live" +
      (ordered.length > live ? ", " + (ordered.length - live) + " ended" : "") : "");
    el.callsEmpty.hidden = ordered.length > 0;
  }

  var channelNodes = new Map();
  function renderCallView(call, alertsOn) {
    var name = call ? call.name : "";
    if (el.callView.dataset.call !== name) {
      el.callView.dataset.call = name;
      channelNodes.forEach(function (node) { node.remove(); });
      channelNodes.clear();
    }
    setText(el.callName, name || "—");
    setData(el.callView, "open", call ? String(call.open) : "");
    setText(el.callState, call ? (call.open ? "live" : "ended") : "no calls yet");
    var streams = call ? call.streams : [];
    reconcile(el.channels, streams.map(function (s) { return s.name; }), channelNodes,
      function (stream) {
        var node = el.channelTemplate.content.firstElementChild.cloneNode(true);
        node.dataset.stream = stream;
        node.querySelector(".channel-chart").dataset.stream = stream;
        var role = node.querySelector(".channel-role");
        role.textContent = state.streams.get(stream).role;
        role.title = "show " + stream + " in detail below";
        role.addEventListener("click", function () { select(stream, true); });
        return node;
      });
    setData(el.channels, "count", String(streams.length));
    var range = timeRange(streams);
    streams.forEach(function (s) {
      var node = channelNodes.get(s.name);
      setData(node, "open", String(s.open));
      setData(node, "alert", String(alertsOn.has(s.name)));
      node.querySelector(".channel-role").setAttribute("aria-pressed",
        String(s.name === state.selected));
      var speech = node.querySelector(".channel-speech");
      setData(speech, "speaking", String(s.speaking));
      setText(speech.querySelector(".text"), s.open ? (s.speaking ? "speaking" : "quiet")
        : (s.closeReason && s.closeReason !== "end" ? "ended (" + s.closeReason + ")" : "ended") +
          (s.windowsDropped ? ", " + s.windowsDropped + " windows dropped" : ""));
      var m = s.last;
      var labelNode = node.querySelector(".channel-label");
      var label = m ? m.smoothed_label : "";
      if (labelNode.dataset.label !== label) { // aria-live: announce changes only
        labelNode.dataset.label = label;
        labelNode.textContent = "";
        var who = document.createElement("span");
        who.className = "sr-only"; // a screen reader hears whose label changed
        who.textContent = s.role + ": ";
        labelNode.appendChild(who);
        labelNode.appendChild(document.createTextNode(m ? label : "—"));
        labelNode.style.color = m ? colour(label) : GREY;
      }
      var conf = node.querySelector(".channel-confidence");
      setData(conf, "value", m ? String(m.smoothed_confidence) : "");
      setText(conf, m ? fmt(m.smoothed_confidence, 2) + " · " + fmt(m.end_s, 1) + " s" :
        (s.open ? "no windows yet" : "no speech"));
      drawChart(node.querySelector(".channel-chart"), s, range); // one time axis per call
      renderUtterances(node.querySelector(".channel-utterances"), s);
    });
  }

  function renderUtterances(list, s) {
    var version = String(s.utterancesVersion || 0);
    if (list.dataset.version === version) return;
    list.dataset.version = version;
    list.innerHTML = "";
    s.utterances.forEach(function (u) {
      var li = document.createElement("li");
      li.dataset.label = u.label;
      li.dataset.confidence = String(u.confidence);
      li.dataset.startS = String(u.start_s);
      li.dataset.endS = String(u.end_s);
      var strong = document.createElement("strong");
      strong.textContent = u.label;
      strong.style.color = colour(u.label);
      li.appendChild(strong);
      li.appendChild(document.createTextNode(" " + fmt(u.confidence, 2) + " · " +
        fmt(u.end_s - u.start_s, 1) + " s long, " + fmt(u.start_s, 1) + "–" +
        fmt(u.end_s, 1) + " s"));
      li.title = u.windows + " windows" +
        (u.windows_dropped ? ", " + u.windows_dropped + " dropped" : "");
      list.appendChild(li);
    });
  }

  var alertNodes = new Map();
  function renderAlerts() {
    var active = 0;
    reconcile(el.alerts, state.alerts.map(function (a) { return a.key; }), alertNodes,
      function (key) { return makeAlert(state.alertIndex.get(key)); });
    state.alerts.forEach(function (a) {
      if (a.state !== "end") active += 1;
      if (a.dirty) { updateAlert(a, alertNodes.get(a.key)); a.dirty = false; }
    });
    el.alertsEmpty.hidden = state.alerts.length > 0;
    setData(el.alertCount, "active", String(active));
    setText(el.alertCount, state.alerts.length ? active + " active" : "");
  }

  function makeAlert(a) {
    var li = document.createElement("li");
    li.dataset.alertId = String(a.id);
    li.dataset.stream = a.stream;
    li.dataset.label = a.label;
    li.dataset.rule = a.rule;
    li.dataset.value = String(a.probability);
    li.innerHTML = '<time></time> <button type="button" class="alert-stream"></button> ' +
      '<span class="alert-rule"></span> <strong class="alert-value"></strong> ' +
      '<span class="alert-status muted"></span>';
    var time = li.querySelector("time");
    time.dateTime = new Date(a.wall_time * 1000).toISOString();
    time.textContent = clock(a.wall_time);
    var b = li.querySelector(".alert-stream");
    b.textContent = a.stream;
    b.addEventListener("click", function () { select(a.stream, true); });
    li.querySelector(".alert-rule").textContent = a.rule;
    var v = li.querySelector(".alert-value");
    v.textContent = a.label + " " + fmt(a.probability, 2);
    v.style.color = colour(a.label);
    return li;
  }

  function updateAlert(a, li) {
    li.dataset.state = a.state;
    var status = "since " + fmt(a.since_s, 1) + " s";
    if (a.end) {
      status += ", ended at " + fmt(a.end.at_s, 1) + " s (" + fmt(a.end.probability, 2) + ")";
    } else if (a.interrupted) {
      status += ", server restarted";
    } else {
      status += ", active";
    }
    li.querySelector(".alert-status").textContent = status;
  }

  function renderStats() {
    var st = state.stats;
    if (!st) {
      el.stats.textContent = "no stats yet";
      el.stats.dataset.lagS = "";
      el.stats.dataset.windowsDropped = "";
      return;
    }
    el.stats.dataset.lagS = String(st.lag_s);
    el.stats.dataset.windowsDropped = String(st.windows_dropped);
    el.stats.textContent = "lag " + fmt(st.lag_s, 2) + " s · windows " + st.windows_done +
      " · dropped " + st.windows_dropped + " · blocks dropped " + st.blocks_dropped +
      " · overflows " + st.input_overflows + " · clients " + st.clients +
      " · client drops " + st.client_messages_dropped;
  }

  function niceStep(span) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
    for (var i = 0; i < steps.length; i++) if (span / steps[i] <= 7) return steps[i];
    return 1200;
  }

  // Stream times [first, last] of some streams' charted windows (null: none yet).
  function timeRange(streams) {
    var range = null;
    streams.forEach(function (s) {
      if (!s || !s.history.length) return;
      var first = Math.floor(s.history[0].end), last = s.history[s.history.length - 1].end;
      range = range ? [Math.min(range[0], first), Math.max(range[1], last)] : [first, last];
    });
    return range;
  }

  // Draw a stream's rolling probabilities over ``range`` (default: its own windows' times);
  // skipped when nothing it shows has changed.
  function drawChart(canvas, s, range) {
    range = range || timeRange([s]) || [0, 0];
    var dpr = window.devicePixelRatio || 1;
    var cssW = canvas.clientWidth || canvas.width, cssH = canvas.clientHeight || canvas.height;
    var key = (s ? s.name + "#" + s.version : "") + "|" + cssW + "x" + cssH + "@" + dpr + "|" +
      state.labels.join(",") + "|" + range.join(",");
    if (canvas.drawn === key) return;
    canvas.drawn = key;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    var L = 40, R = 10, T = 10, B = 28;
    var w = cssW - L - R, h = cssH - T - B;
    var hist = s ? s.history : [];
    // the axis grows from MIN_SPAN_S with the data, then rolls once it spans CHART_SPAN_S
    var tFirst = range[0], tLast = range[1];
    var span = Math.min(CHART_SPAN_S, Math.max(MIN_SPAN_S, tLast - tFirst));
    var t0 = tLast - tFirst < span ? tFirst : tLast - span;
    var t1 = t0 + span;
    var x = function (t) { return L + (t - t0) / span * w; };
    var y = function (p) { return T + (1 - p) * h; };

    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#e3e7eb";
    ctx.fillStyle = "#5f6b76";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    [0, 0.25, 0.5, 0.75, 1].forEach(function (p) {
      ctx.beginPath(); ctx.moveTo(L, y(p)); ctx.lineTo(L + w, y(p)); ctx.stroke();
      ctx.fillText(p.toFixed(2), L - 4, y(p));
    });
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    var step = niceStep(span);
    for (var t = Math.ceil(Math.max(0, t0) / step) * step; t <= t1; t += step) {
      ctx.beginPath(); ctx.moveTo(x(t), T); ctx.lineTo(x(t), T + h); ctx.stroke();
      ctx.fillText(t + " s", x(t), T + h + 6);
    }

    var hop = state.hello ? state.hello.hop_s : 0.5;
    var win = state.hello ? state.hello.window_s : 2.0;
    var gap = Math.max(4 * hop, win + hop); // farther apart than this: a pause, break the line
    var shown = hist.filter(function (pt) { return pt.end >= t0; });
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    state.labels.forEach(function (label) {
      ctx.strokeStyle = colour(label);
      ctx.fillStyle = colour(label);
      ctx.beginPath();
      var prev = null;
      shown.forEach(function (pt) {
        var p = pt.p[label];
        if (typeof p !== "number") { prev = null; return; }
        if (prev === null || pt.end - prev > gap) {
          ctx.moveTo(x(pt.end), y(p));
          ctx.fillRect(x(pt.end) - 1.5, y(p) - 1.5, 3, 3); // a lone point stays visible
        } else {
          ctx.lineTo(x(pt.end), y(p));
        }
        prev = pt.end;
      });
      ctx.stroke();
    });
    canvas.dataset.points = String(shown.length);
    canvas.dataset.stream = s ? s.name : "";
    canvas.setAttribute("aria-label", s
      ? "class probabilities of stream " + s.name + ", " + shown.length + " windows"
      : "no stream selected");
  }

  var renders = 0;
  function render() {
    renders += 1;
    var calls = collectCalls();
    pruneCalls(calls);
    var ordered = Array.from(calls.values()).sort(callOrder);
    chooseSelection(calls, ordered);
    var alertsOn = activeAlerts();
    renderSelect();
    var s = state.selected !== null ? state.streams.get(state.selected) : null;
    renderCalls(ordered, alertsOn);
    renderCallView(s ? calls.get(s.call) : null, alertsOn);
    renderAlerts();
    renderCurrent(s || null);
    renderList();
    renderStats();
    drawChart(el.chart, s || null);
  }

  function select(name, pinned) {
    state.selected = name;
    state.pinned = pinned !== false;
    scheduleRender();
  }

  function selectCall(call) {
    if (state.selected !== null && callName(state.selected) === call) {
      state.pinned = true;
      scheduleRender();
      return;
    }
    var first = null;
    state.streams.forEach(function (s) { if (first === null && s.call === call) first = s.name; });
    if (first !== null) select(first);
  }

  el.select.addEventListener("change", function () { select(el.select.value); });
  window.addEventListener("resize", scheduleRender);
  setInterval(function () {
    renderAge(state.selected !== null ? state.streams.get(state.selected) : null);
    if (state.streams.size) scheduleRender(); // ended calls age out of the list
  }, 1000);

  // exposed for debugging and tests: read-only view of what the page knows
  window.emotionMonitor = {
    state: state,
    connected: function () { return socket !== null && socket.readyState === 1; },
    get renders() { return renders; }, // counts renders: the page shows all it had received
    calls: function () {
      return Array.from(collectCalls().values()).sort(callOrder).map(function (c) {
        return { call: c.name, open: c.open, streams: c.streams.map(function (s) {
          return s.name;
        }) };
      });
    },
  };

  render();
  connect();
})();
