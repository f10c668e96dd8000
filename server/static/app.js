// emotion-monitor dashboard: connects to ws(s)://<this host>/ws and draws what arrives; ended
// calls come from the server's timeline store (GET /api/calls, /api/timeline).
// Plain JavaScript, no libraries, no build step. The wire format is documented in
// docs/protocol.md (streamer/protocol/messages.py is the reference). Values the server and the
// page must agree on (the uncertain label) come in the server's hello, not as copies here; only
// what the page needs before hello is its own: the /ws path and the protocol version it speaks.
//
// Three views, chosen by the URL hash: #calls (default; #calls?call=NAME names the call shown),
// #wallboard (one row per live call, then the ended calls of the store) and
// #stored?session=S&call=NAME&before=CURSOR (an ended call's timeline read from the store).
// Element ids and data attributes are stable so a browser test can read the page:
//   calls:     #connection-state, #call-list li[data-call] .chip[data-stream][data-label],
//              #call-view[data-call] .channel[data-stream] .channel-label[data-label],
//              canvas.channel-chart[data-points], .channel-utterances li[data-label],
//              #alerts li[data-alert-id][data-stream][data-label][data-state][data-end-reason],
//              #current-label, #current-confidence, #speech-state, #stats
//   wallboard: #wallboard-rows tr[data-call][data-rank][data-alert][data-negative][data-started]
//              td .party[data-stream][data-label][data-confidence],
//              #past-list li[data-session][data-call][data-state]
//   stored:    #stored-view[data-call][data-session][data-state] with .channel as above
// A call is the part of a stream name before the first "/" (call-42/agent, call-42/customer),
// or the stream's metadata "call" (pushed calls); a stream without "/" is a call of one channel.
(function () {
  "use strict";

  var PROTOCOL_VERSION = 1;        // the version this page speaks; other frames are skipped
  var EVENTS_PATH = "/ws";         // needed to connect, so before any hello can say it
  var API_PATH = "/api/";          // the store's read-only JSON (docs/protocol.md, HTTP API)
  var CHART_SPAN_S = 180;          // seconds of stream time shown in a live chart, at most
  var MIN_SPAN_S = 30;             // the axis starts this wide and grows with the data
  var MAX_POINTS = 4000;           // per live stream, a hard cap whatever the hop
  var MAX_UTTERANCES = 200;        // per live channel, newest first (the list says how many
                                   // older ones it no longer shows)
  var MAX_ALERTS = 100;            // in the alerts panel, newest first
  var CALL_LINGER_S = 120;         // an ended call stays listed this long (unless selected)
  var MAX_ENDED_CALLS = 500;       // and at most this many (memory stays bounded)
  var MIN_FRAME_MS = 100;          // at most ten renders a second, however many streams
  var BACKOFF_INITIAL_MS = 500;
  var BACKOFF_MAX_MS = 10000;
  var PAST_PAGE = 50;              // ended calls per request to the store
  var MAX_PAST_CALLS = 500;        // ended calls listed at most ("older calls" stops there)
  var PAST_REFRESH_MS = 2000;      // a call that ended shows in the store's list this soon
  var TIMELINE_PAGE = 5000;        // events per /api/timeline request
  var MAX_STORED_EVENTS = 40000;   // per party of a stored call (hours of windows at 0.5 s hop)
  var MAX_STORED_UTTERANCES = 2000; // per party of a stored call
  // Labels that count as negative emotions on the wallboard (lower case, any model's spelling).
  var NEGATIVE_LABELS = new Set(["angry", "anger", "sad", "sadness", "fear", "fearful",
    "disgust", "disgusted", "contempt", "frustrated", "frustration"]);
  var END_REASONS = {              // alert end reasons (newer servers) as the page says them
    cleared: "cleared (below the threshold)", silence: "speech stopped",
    stream_closed: "call closed", shutdown: "server stopped",
  };

  // One colour per label, the same hues as the terminal view (client/watch.py).
  var LABEL_COLOURS = {
    angry: "#c62828", happy: "#b7791f", neutral: "#00838f", sad: "#1565c0",
    fear: "#6a1b9a", surprise: "#2e7d32", disgust: "#8d6e00", calm: "#00695c",
  };
  var PALETTE = ["#2e7d32", "#6a1b9a", "#d84315", "#283593", "#ad1457", "#00695c"];
  var GREY = "#757575";
  var VIEWS = ["calls", "wallboard", "stored"];

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    conn: $("connection-state"), serverClock: $("server-clock"),
    navCalls: $("nav-calls"), navWallboard: $("nav-wallboard"),
    pages: { calls: $("calls-page"), wallboard: $("wallboard-page"), stored: $("stored-page") },
    name: $("stream-name"), label: $("current-label"), confidence: $("current-confidence"),
    speech: $("speech-state"), streamState: $("stream-state"), lastUpdate: $("last-update"),
    windowInfo: $("window-info"), bars: $("probabilities"), stats: $("stats"),
    server: $("server-info"),
    calls: $("call-list"), callsEmpty: $("call-list-empty"), callCount: $("call-count"),
    callView: $("call-view"), callName: $("call-name"), callState: $("call-state"),
    callStarted: $("call-started"), callDuration: $("call-duration"),
    callDurationLabel: $("call-duration-label"),
    channels: $("channels"), callLegend: $("call-legend"), channelTemplate: $("channel-template"),
    alerts: $("alerts"), alertsEmpty: $("alerts-empty"), alertCount: $("alert-count"),
    wallRows: $("wallboard-rows"), wallEmpty: $("wallboard-empty"), wallCount: $("wallboard-count"),
    pastList: $("past-list"), pastStatus: $("past-status"), pastMore: $("past-more"),
    pastCount: $("past-count"),
    storedView: $("stored-view"), storedName: $("stored-name"), storedInfo: $("stored-info"),
    storedStatus: $("stored-status"), storedChannels: $("stored-channels"),
    storedLegend: $("stored-legend"), storedAlerts: $("stored-alerts"),
    storedAlertsEmpty: $("stored-alerts-empty"),
  };

  var state = {
    hello: null,        // the latest hello
    labels: [],
    uncertain: null,    // hello.uncertain_label: the smoothed label when no class is clear
    streams: new Map(), // name -> stream record, in the order they were first seen
    selected: null,     // the stream shown in "Selected party"; its call is the call shown
    pinned: false,      // the user (or the URL) chose the selection: never move it for them
    wantedCall: null,   // the call the URL hash names, chosen once the backlog is in if live
    stats: null,        // the cluster's stats: sums over nodeStats, the largest lag
    nodeStats: new Map(), // node id ("" for a single server) -> its latest stats frame
    replaying: true,    // until this connection's first stats (after hello): the backlog
    alerts: [],         // alert records, newest first, at most MAX_ALERTS
    alertIndex: new Map(), // session + "/" + alert_id -> alert record
    maxWall: 0,         // the latest server wall_time seen (to age replayed events)
    clockOffset: 0,     // server clock minus this browser's, from live stats frames
    view: "calls",
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
  function serverNowS() { return nowS() + state.clockOffset; }

  function streamRecord(name) {
    var s = state.streams.get(name);
    if (!s) {
      s = { name: name, call: callOf(name), role: roleOf(name), open: true, speaking: false,
            last: null, lastSeq: -1, updatedWall: null, openedWall: null, closedWall: null,
            history: [], version: 0, utterances: [], utterancesSeen: 0, utterancesVersion: 0,
            endedAt: null };
      state.streams.set(name, s);
    }
    return s;
  }

  function resetStream(s) {
    s.history = []; s.last = null; s.lastSeq = -1; s.updatedWall = null; s.closedWall = null;
    s.utterances = []; s.utterancesSeen = 0; s.utterancesVersion += 1; s.version += 1;
    s.endedAt = null;
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
      state.nodeStats.clear();
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
    s.closedWall = m.wall_time;
    s.closeReason = m.reason;
    // totals of the stream (newer servers): windows the engine dropped show on the channel
    s.windowsDropped = typeof m.windows_dropped === "number" ? m.windows_dropped : 0;
    if (!state.replaying) pastChanged(); // the store's list of ended calls has a new one
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

  // Keep a channel's utterances, newest first, at most ``cap``; count every one received.
  function addUtterance(s, m, cap) {
    var newest = s.utterances[0];
    if (newest && m.end_s <= newest.end_s) return; // a backlog resent after a reconnect
    s.utterances.unshift(m);
    s.utterancesSeen += 1;
    if (s.utterances.length > cap) s.utterances.length = cap;
    s.utterancesVersion += 1;
  }

  // An alert frame into a list of alert records (newest first, at most ``cap``) and its index.
  function addAlert(list, index, key, m, cap) {
    var a = index.get(key);
    if (m.state === "start" || !a) {
      if (a) return; // a backlog resent after a reconnect
      a = { key: key, id: m.alert_id, stream: m.stream, rule: m.rule, label: m.label,
            threshold: m.threshold, for_s: m.for_s, since_s: m.since_s, at_s: m.at_s,
            probability: m.probability, wall_time: m.wall_time, state: "start",
            end: null, interrupted: false, dirty: true };
      index.set(key, a);
      // newest first by server time: a backlog replays stream by stream, not in time order
      var i = 0;
      while (i < list.length && newer(list[i], a)) i++;
      list.splice(i, 0, a);
      while (list.length > cap) index.delete(list.pop().key);
    }
    if (m.state === "end" && !a.end) {
      a.state = "end";
      // reason and speech_s come from newer servers; older ones send neither
      a.end = { at_s: m.at_s, probability: m.probability, wall_time: m.wall_time,
                reason: typeof m.reason === "string" ? m.reason : null,
                speech_s: typeof m.speech_s === "number" ? m.speech_s : null };
      a.dirty = true;
    }
  }

  function newer(a, b) {
    return a.wall_time !== b.wall_time ? a.wall_time > b.wall_time : a.id > b.id;
  }

  function onAlert(m) {
    var session = state.hello ? state.hello.session : "";
    addAlert(state.alerts, state.alertIndex, session + "/" + m.alert_id, m, MAX_ALERTS);
  }

  // A node whose stats stopped this long ago (server seconds) no longer counts.
  var NODE_STATS_MAX_AGE_S = 10;
  var SUMMED_STATS = ["windows_done", "windows_dropped", "blocks_dropped", "input_overflows",
    "clients", "client_messages_dropped"];

  // In a cluster (run --bus) every node sends its own stats, told apart by "node": keep the
  // latest per node and show their sums (the largest lag), so the panel does not alternate.
  function clusterStats(byNode, now) {
    var total = { lag_s: 0, nodes: 0, wall_time: now };
    SUMMED_STATS.forEach(function (key) { total[key] = 0; });
    byNode.forEach(function (st, node) {
      if (now - st.wall_time > NODE_STATS_MAX_AGE_S) { byNode.delete(node); return; }
      total.nodes += 1;
      total.lag_s = Math.max(total.lag_s, Number(st.lag_s) || 0);
      SUMMED_STATS.forEach(function (key) { total[key] += Number(st[key]) || 0; });
    });
    return total;
  }

  function onStats(m) {
    state.nodeStats.set(typeof m.node === "string" ? m.node : "", m);
    state.stats = clusterStats(state.nodeStats, m.wall_time);
    // stats are never replayed: their wall_time is the server's clock now
    if (typeof m.wall_time === "number") state.clockOffset = m.wall_time - nowS();
    state.replaying = false;
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
      case "utterance": addUtterance(streamRecord(m.stream), m, MAX_UTTERANCES); break;
      case "alert": onAlert(m); break;
      case "stats": onStats(m); break;
      case "error": console.warn("server error", m.code, m.message); break;
      default: return; // unknown types are ignored (forward compatible)
    }
    scheduleRender();
  }

  // ---- connection -------------------------------------------------------------------------

  var socket = null;
  var failures = 0;

  function setConnection(kind, text) {
    el.conn.dataset.state = kind;
    el.conn.textContent = text;
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + EVENTS_PATH;
  }

  function connect() {
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
      setTimeout(connect, delay);
    };
  }

  // ---- calls ------------------------------------------------------------------------------

  // Calls from the streams: {name, streams (first-seen order), open, endedAt, started, closed}.
  function collectCalls() {
    var calls = new Map();
    state.streams.forEach(function (s) {
      var c = calls.get(s.call);
      if (!c) {
        c = { name: s.call, streams: [], open: false, endedAt: 0, started: null, closed: null };
        calls.set(s.call, c);
      }
      c.streams.push(s);
      if (s.open) c.open = true;
      else c.endedAt = Math.max(c.endedAt, s.endedAt || 0);
      if (s.openedWall !== null) c.started = c.started === null ? s.openedWall :
        Math.min(c.started, s.openedWall);
      if (s.closedWall !== null) c.closed = Math.max(c.closed || 0, s.closedWall);
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

  function activeAlerts() { // stream -> its alerts on now, the longest-running first
    var on = new Map();
    state.alerts.forEach(function (a) {
      if (a.state === "end") return;
      if (!on.has(a.stream)) on.set(a.stream, []);
      on.get(a.stream).push(a);
    });
    on.forEach(function (list) { list.sort(function (a, b) { return a.wall_time - b.wall_time; }); });
    return on;
  }

  // The confidence of a stream's current smoothed label when that label is a negative emotion.
  function negativeScore(s) {
    var m = s.last;
    if (!m || !s.open || !NEGATIVE_LABELS.has(String(m.smoothed_label).toLowerCase())) return 0;
    return m.smoothed_confidence;
  }

  // What the wallboard sorts a live call by (see attentionOrder).
  function attentionOf(c, alertsOn) {
    var alerts = [];
    var negative = 0;
    c.streams.forEach(function (s) {
      (alertsOn.get(s.name) || []).forEach(function (a) { alerts.push(a); });
      negative = Math.max(negative, negativeScore(s));
    });
    alerts.sort(function (a, b) { return a.wall_time - b.wall_time; });
    return { alerts: alerts, alertSince: alerts.length ? alerts[0].wall_time : null,
             negative: negative, band: Math.floor(negative * 10 + 1e-9) / 10,
             started: c.started };
  }

  // Needs attention first: an active alert (the longest-running first), then the highest
  // negative-emotion confidence in steps of 0.1 (rows do not swap over small changes), then
  // the longest call (the earliest start), then by name.
  function attentionOrder(a, b, fa, fb) {
    if ((fa.alertSince === null) !== (fb.alertSince === null)) return fa.alertSince === null ? 1 : -1;
    if (fa.alertSince !== null && fa.alertSince !== fb.alertSince) return fa.alertSince - fb.alertSince;
    if (fa.band !== fb.band) return fb.band - fa.band;
    var sa = fa.started === null ? Infinity : fa.started;
    var sb = fb.started === null ? Infinity : fb.started;
    if (sa !== sb) return sa - sb;
    return naturally.compare(a.name, b.name);
  }

  function liveByAttention(calls, alertsOn) {
    var facts = new Map();
    var live = [];
    calls.forEach(function (c) {
      if (!c.open) return;
      facts.set(c.name, attentionOf(c, alertsOn));
      live.push(c);
    });
    live.sort(function (a, b) { return attentionOrder(a, b, facts.get(a.name), facts.get(b.name)); });
    return { live: live, facts: facts };
  }

  // ---- the store (GET /api/...) -----------------------------------------------------------

  // One API request: the JSON body, or an Error saying the status and the server's message.
  function api(path) {
    return fetch(API_PATH + path, { headers: { Accept: "application/json" } })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (type.indexOf("application/json") === 0) {
          return response.json().then(function (body) {
            if (!response.ok) {
              var err = new Error(response.status + " " + (body.message || body.error));
              err.code = body.error;
              throw err;
            }
            return body;
          });
        }
        return response.text().then(function (text) {
          throw new Error(response.status + " " + text.trim());
        });
      });
  }

  function query(pairs) {
    return Object.keys(pairs).filter(function (k) {
      return pairs[k] !== null && pairs[k] !== undefined;
    }).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(String(pairs[k]));
    }).join("&");
  }

  var past = { calls: [], next: null, status: "", state: "", loading: false, again: false,
               timer: null, version: 0 };

  function pastChanged() {
    if (state.view !== "wallboard" || past.timer !== null) return;
    past.timer = setTimeout(function () { past.timer = null; loadPast(false); }, PAST_REFRESH_MS);
  }

  // The newest ended calls again (as many as are listed), or (older) the next page after them.
  function loadPast(older) {
    if (past.loading) { past.again = past.again || !older; return; }
    if (older && (past.next === null || past.calls.length >= MAX_PAST_CALLS)) return;
    past.loading = true;
    var limit = older ? PAST_PAGE : Math.min(200, Math.max(PAST_PAGE, past.calls.length));
    api("calls?" + query({ state: "ended", limit: limit, before: older ? past.next : null }))
      .then(function (body) {
        past.calls = older ? past.calls.concat(body.calls) : body.calls;
        if (past.calls.length > MAX_PAST_CALLS) past.calls.length = MAX_PAST_CALLS;
        past.next = body.next_before;
        past.state = "loaded";
        past.status = past.calls.length ? "" : "no ended calls in the store yet";
        if (past.next !== null && past.calls.length >= MAX_PAST_CALLS) {
          past.status = "showing the newest " + MAX_PAST_CALLS + " ended calls";
        }
      })
      .catch(function (err) {
        past.state = err.code === "no_store" ? "no_store" : "error";
        past.status = err.code === "no_store"
          ? "this server keeps no timeline store (--no-store): ended calls are not kept"
          : "cannot read the store: " + err.message;
      })
      .then(function () {
        past.loading = false;
        past.version += 1;
        scheduleRender();
        if (past.again) { past.again = false; loadPast(false); }
      });
  }

  var stored = { key: null };

  function storedKey(p) {
    return [p.get("session"), p.get("call"), p.get("before")].join("\n");
  }

  // Open an ended call from the store: its parties, then each party's timeline page by page.
  function openStored(p) {
    var key = storedKey(p);
    if (stored.key === key && stored.state !== "error") return; // shown already (or loading)
    stored = { key: key, session: p.get("session") || "", call: p.get("call") || "",
               state: "loading", message: "reading the store…", info: null, labels: [],
               parties: [], alerts: [], alertIndex: new Map(), version: 0 };
    var mine = stored;
    api("calls?" + query({ session: mine.session, call: mine.call, before: p.get("before"),
                           limit: 1 }))
      .then(function (body) {
        if (!body.calls.length) {
          throw new Error("the store has no call " + mine.call + " in session " + mine.session);
        }
        mine.info = body.calls[0];
        mine.parties = mine.info.streams.map(function (st) {
          return { name: st.stream, role: st.role, info: st, history: [], last: null,
                   utterances: [], utterancesSeen: 0, utterancesVersion: 0, version: 0,
                   events: 0, truncated: false, open: false, closeReason: st.reason,
                   windowsDropped: st.windows_dropped || 0 };
        });
        scheduleRender();
        return Promise.all(mine.parties.map(function (party) {
          return loadTimeline(mine, party, party.info.open_id - 1);
        }));
      })
      .then(function () {
        if (stored !== mine) return;
        mine.state = "loaded";
        var truncated = mine.parties.filter(function (party) { return party.truncated; });
        mine.message = truncated.length ? "timeline cut at " + MAX_STORED_EVENTS +
          " events per party" : "";
      })
      .catch(function (err) {
        mine.state = "error";
        mine.message = "cannot read the call from the store: " + err.message;
      })
      .then(function () { mine.version += 1; scheduleRender(); });
  }

  function loadTimeline(mine, party, after) {
    return api("timeline?" + query({ session: mine.session, stream: party.name, after: after,
                                     limit: TIMELINE_PAGE }))
      .then(function (body) {
        if (stored !== mine) return null;
        mine.labels = body.labels;
        body.events.forEach(function (m) { storedEvent(mine, party, m); });
        party.events += body.events.length;
        party.version += 1;
        scheduleRender();
        if (body.next_after === null) return null;
        if (party.events >= MAX_STORED_EVENTS) { party.truncated = true; return null; }
        return loadTimeline(mine, party, body.next_after);
      });
  }

  function storedEvent(mine, party, m) {
    switch (m.type) {
      case "window":
        party.last = m;
        party.history.push({ start: m.start_s, end: m.end_s, p: m.probabilities });
        break;
      case "utterance": addUtterance(party, m, MAX_STORED_UTTERANCES); break;
      case "alert":
        addAlert(mine.alerts, mine.alertIndex, String(m.alert_id), m, Infinity);
        break;
      case "stream_close":
        party.closeReason = m.reason;
        party.windowsDropped = typeof m.windows_dropped === "number" ? m.windows_dropped : 0;
        break;
      default: break;
    }
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

  function two(n) { return (n < 10 ? "0" : "") + n; }

  // Time of day (this browser's time zone) of a server wall time.
  function clock(wall) {
    var d = new Date(wall * 1000);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  // Date and time of day, for calls of earlier days.
  function dateClock(wall) {
    var d = new Date(wall * 1000);
    var today = new Date();
    if (d.toDateString() === today.toDateString()) return clock(wall);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
      clock(wall);
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    return (h ? h + ":" + two(m) : String(m)) + ":" + two(s % 60);
  }

  function endReason(reason) {
    return END_REASONS[reason] || reason;
  }

  // Which stream is shown: the user's choice, else the URL's, else the live call that needs
  // attention most (the wallboard's order), else the call that ended last.
  function chooseSelection(calls, byAttention) {
    if (state.selected !== null && !state.streams.has(state.selected)) state.selected = null;
    if (state.selected === null && initialStream && state.streams.has(initialStream)) {
      state.selected = initialStream;
    }
    if (state.selected === null && initialCall && calls.has(initialCall)) {
      state.selected = calls.get(initialCall).streams[0].name;
    }
    // Mid-backlog, a call not replayed to its end yet looks live: choose by default only
    // once the backlog is in (the first stats frame).
    if (state.replaying) return;
    if (state.wantedCall !== null) {
      // a reload of #calls?call=NAME: that call again if it is live (or none is)
      var wanted = calls.get(state.wantedCall);
      state.wantedCall = null;
      if (wanted && (wanted.open || !byAttention.live.length)) {
        state.selected = wanted.streams[0].name;
        state.pinned = true;
        return;
      }
    }
    var current = state.selected !== null ? calls.get(callName(state.selected)) : null;
    if (state.selected === null || (!state.pinned && current && !current.open)) {
      // nothing chosen yet, or the call shown by default ended: follow a live call
      var pick = byAttention.live.length ? byAttention.live[0] : lastEnded(calls);
      if (pick && (state.selected === null || pick.open)) state.selected = pick.streams[0].name;
    }
  }

  function lastEnded(calls) {
    var best = null;
    calls.forEach(function (c) { if (!best || c.endedAt > best.endedAt) best = c; });
    return best;
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
    setText(el.windowInfo, m
      ? "#" + m.seq + " · stream time " + fmt(m.start_s, 1) + "–" + fmt(m.end_s, 1) +
        " s · at " + clock(m.wall_time) + " · raw " + m.label + " " + fmt(m.confidence, 2)
      : "");
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
    }
    renderLegend(el.callLegend, labels);
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
      setText(el.lastUpdate, "no windows yet");
      el.lastUpdate.dataset.wallTime = "";
      return;
    }
    var age = Math.max(0, serverNowS() - s.updatedWall);
    el.lastUpdate.dataset.wallTime = String(s.updatedWall);
    setText(el.lastUpdate, "updated " + (age < 60 ? fmt(age, 0) + " s" :
      fmt(age / 60, 0) + " min") + " ago (" + clock(s.updatedWall) + ")");
  }

  function renderLegend(list, labels) {
    if (list.dataset.labels === labels.join("\n")) return;
    list.dataset.labels = labels.join("\n");
    list.innerHTML = "";
    labels.forEach(function (name) {
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

  // Label chips, one per stream of a call (the call list and the wallboard).
  function renderChips(chips, streams, withConfidence) {
    var keys = streams.map(function (s) { return s.name; });
    if (chips.dataset.streams !== keys.join("\n")) {
      chips.dataset.streams = keys.join("\n");
      chips.innerHTML = "";
      streams.forEach(function (s) {
        var chip = document.createElement("span");
        chip.className = withConfidence ? "chip party" : "chip";
        chip.dataset.stream = s.name;
        chip.dataset.role = s.role;
        chip.innerHTML = '<span class="role"></span> <span class="chip-label"></span>' +
          (withConfidence ? ' <span class="chip-confidence"></span>' : "");
        chip.querySelector(".role").textContent = s.role;
        chips.appendChild(chip);
      });
    }
    streams.forEach(function (s, i) {
      var chip = chips.children[i];
      var label = s.last ? s.last.smoothed_label : "";
      setData(chip, "label", label);
      setData(chip, "open", String(s.open));
      setData(chip, "speaking", String(s.speaking));
      setText(chip.querySelector(".chip-label"), label || "—");
      chip.style.setProperty("--chip", label ? colour(label) : GREY);
      if (withConfidence) {
        var conf = s.last ? s.last.smoothed_confidence : null;
        setData(chip, "confidence", conf === null ? "" : String(conf));
        setText(chip.querySelector(".chip-confidence"), conf === null ? "" : fmt(conf, 2));
        chip.title = s.role + ": " + (label ? label + ", confidence " + fmt(conf, 2) :
          "no speech yet");
      }
    });
  }

  function callDuration(c) {
    if (c.started === null) return null;
    return (c.open ? serverNowS() : (c.closed || c.started)) - c.started;
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
      var took = callDuration(c);
      setText(b.querySelector(".call-status"), (c.open ? (alerting ? "alert · live" : "live") :
        "ended") + (took === null ? "" : (c.open ? " for " : " after ") + duration(took)));
      renderChips(b.querySelector(".chips"), c.streams, false);
    });
    setData(el.callCount, "live", String(live));
    setData(el.callCount, "ended", String(ordered.length - live));
    setText(el.callCount, ordered.length ? live + " live" +
      (ordered.length > live ? ", " + (ordered.length - live) + " ended" : "") : "");
    el.callsEmpty.hidden = ordered.length > 0;
  }

  function renderCallTimes(call) {
    var started = call ? call.started : null;
    setData(el.callStarted, "wallTime", started === null ? "" : String(started));
    setText(el.callStarted, started === null ? "—" : dateClock(started));
    var took = call ? callDuration(call) : null;
    setData(el.callDuration, "seconds", took === null ? "" : String(Math.floor(took)));
    setText(el.callDuration, took === null ? "—" : duration(took));
    setText(el.callDurationLabel, call && !call.open && call.closed !== null
      ? "ended " + clock(call.closed) + " after" : "duration");
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
    renderCallTimes(call);
    var streams = call ? call.streams : [];
    reconcile(el.channels, streams.map(function (s) { return s.name; }), channelNodes,
      function (stream) {
        return makeChannel(stream, state.streams.get(stream).role, function () {
          select(stream, true);
        });
      });
    setData(el.channels, "count", String(streams.length));
    var range = timeRange(streams);
    streams.forEach(function (s) {
      var node = channelNodes.get(s.name);
      setData(node, "alert", String(alertsOn.has(s.name)));
      node.querySelector(".channel-role").setAttribute("aria-pressed",
        String(s.name === state.selected));
      var speech = node.querySelector(".channel-speech");
      setData(speech, "speaking", String(s.speaking));
      setText(speech.querySelector(".text"), s.open ? (s.speaking ? "speaking" : "quiet")
        : endedText(s));
      renderChannel(node, s, { range: range, labels: state.labels, whole: false });
    });
  }

  function endedText(s) {
    return (s.closeReason && s.closeReason !== "end" ? "ended (" + s.closeReason + ")" : "ended") +
      (s.windowsDropped ? ", " + s.windowsDropped + " windows dropped" : "");
  }

  function makeChannel(stream, role, onPick) {
    var node = el.channelTemplate.content.firstElementChild.cloneNode(true);
    node.dataset.stream = stream;
    node.querySelector(".channel-chart").dataset.stream = stream;
    var button = node.querySelector(".channel-role");
    button.textContent = role;
    if (onPick) {
      button.title = "show " + stream + " in detail";
      button.addEventListener("click", onPick);
    } else {
      button.disabled = true;
    }
    return node;
  }

  // One channel's label, confidence, time, chart and utterances (a live or a stored party).
  function renderChannel(node, s, chart) {
    setData(node, "open", String(!!s.open));
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
    setText(conf, m ? (chart.whole ? "last window: confidence " : "confidence ") +
      fmt(m.smoothed_confidence, 2) : (s.open ? "no windows yet" : "no speech"));
    var time = node.querySelector(".channel-time");
    setData(time, "endS", m ? String(m.end_s) : "");
    setData(time, "wallTime", m ? String(m.wall_time) : "");
    setText(time, m ? "at stream time " + fmt(m.end_s, 1) + " s · " + clock(m.wall_time) : "");
    drawChart(node.querySelector(".channel-chart"), s, chart);
    renderUtterances(node, s);
  }

  function renderUtterances(node, s) {
    var list = node.querySelector(".channel-utterances");
    var version = String(s.utterancesVersion);
    if (list.dataset.version === version) return;
    list.dataset.version = version;
    var count = node.querySelector(".channel-utterance-count");
    var shown = s.utterances.length, total = s.utterancesSeen;
    setData(count, "shown", String(shown));
    setData(count, "total", String(total));
    setText(count, total > shown ? "· the latest " + shown + " of " + total +
      " (older ones are in the store)" : (total ? "· " + total : ""));
    list.innerHTML = "";
    var frag = document.createDocumentFragment();
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
      li.appendChild(document.createTextNode(" confidence " + fmt(u.confidence, 2) + " · " +
        fmt(u.end_s - u.start_s, 1) + " s long · stream time " + fmt(u.start_s, 1) + "–" +
        fmt(u.end_s, 1) + " s · ended " + clock(u.wall_time)));
      li.title = u.windows + " windows" +
        (u.windows_dropped ? ", " + u.windows_dropped + " dropped" : "");
      frag.appendChild(li);
    });
    list.appendChild(frag);
  }

  var alertNodes = new Map();
  function renderAlertList(list, alerts, index, nodes, live) {
    reconcile(list, alerts.map(function (a) { return a.key; }), nodes, function (key) {
      return makeAlert(index.get(key), live);
    });
    var active = 0;
    alerts.forEach(function (a) {
      if (a.state !== "end") active += 1;
      var node = nodes.get(a.key);
      if (a.dirty || node.dataset.state !== a.state) { updateAlert(a, node); a.dirty = false; }
    });
    return active;
  }

  function renderAlerts() {
    var active = renderAlertList(el.alerts, state.alerts, state.alertIndex, alertNodes, true);
    el.alertsEmpty.hidden = state.alerts.length > 0;
    setData(el.alertCount, "active", String(active));
    setText(el.alertCount, state.alerts.length ? active + " active" : "");
  }

  function makeAlert(a, live) {
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
    if (live) b.addEventListener("click", function () { select(a.stream, true); });
    else b.disabled = true;
    li.querySelector(".alert-rule").textContent = a.rule;
    var v = li.querySelector(".alert-value");
    v.textContent = a.label + " probability " + fmt(a.probability, 2);
    v.style.color = colour(a.label);
    return li;
  }

  function updateAlert(a, li) {
    li.dataset.state = a.state;
    li.dataset.endReason = a.end && a.end.reason ? a.end.reason : "";
    var status = "since stream time " + fmt(a.since_s, 1) + " s";
    if (a.end) {
      status += ", ended " + clock(a.end.wall_time) + " at stream time " + fmt(a.end.at_s, 1) +
        " s (probability " + fmt(a.end.probability, 2) + ")";
      if (a.end.speech_s !== null) status += " after " + fmt(a.end.speech_s, 1) + " s of speech";
      if (a.end.reason) status += " · ended: " + endReason(a.end.reason);
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
      setText(el.stats, "no stats yet");
      el.stats.dataset.lagS = "";
      el.stats.dataset.windowsDropped = "";
      return;
    }
    el.stats.dataset.lagS = String(st.lag_s);
    el.stats.dataset.windowsDropped = String(st.windows_dropped);
    setText(el.stats, "lag " + fmt(st.lag_s, 2) + " s · windows " + st.windows_done +
      " · dropped " + st.windows_dropped + " · blocks dropped " + st.blocks_dropped +
      " · overflows " + st.input_overflows + " · clients " + st.clients +
      " · client drops " + st.client_messages_dropped +
      (st.nodes > 1 ? " · nodes " + st.nodes : ""));
  }

  // ---- the wallboard ----------------------------------------------------------------------

  var wallNodes = new Map();
  function makeWallRow(name) {
    var tr = document.createElement("tr");
    tr.dataset.call = name;
    tr.innerHTML = '<th scope="row" class="wb-call"><a></a></th><td class="wb-started"></td>' +
      '<td class="wb-duration"></td><td class="wb-alert"></td>' +
      '<td class="wb-parties"><div class="chips"></div></td>';
    var a = tr.querySelector("a");
    a.textContent = name;
    a.href = "#calls?" + query({ call: name });
    // the whole row opens the call (the link is there for the keyboard)
    tr.addEventListener("click", function (event) {
      if (event.target.closest("a")) return;
      location.hash = a.getAttribute("href");
    });
    return tr;
  }

  function renderWallboard(byAttention) {
    var live = byAttention.live;
    reconcile(el.wallRows, live.map(function (c) { return c.name; }), wallNodes, makeWallRow);
    var alerting = 0;
    live.forEach(function (c, rank) {
      var f = byAttention.facts.get(c.name);
      var tr = wallNodes.get(c.name);
      if (f.alerts.length) alerting += 1;
      setData(tr, "rank", String(rank));
      setData(tr, "alert", String(f.alerts.length > 0));
      setData(tr, "negative", String(f.negative));
      setData(tr, "started", f.started === null ? "" : String(f.started));
      var cells = tr.children;
      setText(cells[1], f.started === null ? "—" : clock(f.started));
      var took = callDuration(c);
      setText(cells[2], took === null ? "—" : duration(took));
      var summary = f.alerts.length ? alertSummary(f.alerts) : "—";
      setText(cells[3], summary);
      if (cells[3].title !== summary) cells[3].title = summary;
      renderChips(cells[4].firstChild, c.streams, true);
    });
    setData(el.wallCount, "live", String(live.length));
    setData(el.wallCount, "alerts", String(alerting));
    setText(el.wallCount, live.length + " live" + (alerting ? ", " + alerting + " alerting" : ""));
    el.wallEmpty.hidden = live.length > 0;
  }

  function alertSummary(alerts) {
    var a = alerts[0];
    var s = state.streams.get(a.stream);
    return a.rule + " · " + (s ? s.role : a.stream) + " · for " +
      duration(serverNowS() - a.wall_time) + (alerts.length > 1 ? " (+" + (alerts.length - 1) +
      " more)" : "");
  }

  var pastNodes = new Map();
  var pastVersion = -1;
  function pastKey(c) { return c.session + "\n" + c.call + "\n" + c.streams[0].open_id; }

  function renderPast() {
    if (pastVersion === past.version) return;
    pastVersion = past.version;
    var byKey = new Map(past.calls.map(function (c) { return [pastKey(c), c]; }));
    reconcile(el.pastList, Array.from(byKey.keys()), pastNodes, function (key) {
      return makePast(byKey.get(key));
    });
    setData(el.pastStatus, "state", past.state);
    setText(el.pastStatus, past.status);
    setData(el.pastCount, "count", String(past.calls.length));
    setText(el.pastCount, past.calls.length ? "· " + past.calls.length +
      (past.next !== null ? " shown, more below" : "") : "");
    el.pastMore.hidden = past.next === null || past.calls.length >= MAX_PAST_CALLS;
  }

  function makePast(c) {
    var li = document.createElement("li");
    li.dataset.session = c.session;
    li.dataset.call = c.call;
    li.dataset.state = c.state;
    var before = Math.max.apply(null, c.streams.map(function (s) { return s.open_id; })) + 1;
    var a = document.createElement("a");
    a.href = "#stored?" + query({ session: c.session, call: c.call, before: before });
    a.className = "call-title";
    a.textContent = c.call;
    li.appendChild(a);
    var reasons = c.streams.map(function (s) { return s.reason; }).filter(function (r, i, all) {
      return r && all.indexOf(r) === i;
    });
    var current = state.hello && state.hello.session === c.session;
    var text = " started " + dateClock(c.started_at) +
      (c.ended_at !== null ? " · lasted " + duration(c.ended_at - c.started_at) : "") +
      " · " + (c.state === "ended" ? "ended" + (reasons.length && reasons.join() !== "end"
        ? " (" + reasons.join(", ") + ")" : "") : "server stopped before the call ended") +
      " · " + c.streams.map(function (s) { return s.role; }).join(", ") +
      (current ? "" : " · earlier server run " + c.session);
    li.appendChild(document.createTextNode(text));
    return li;
  }

  // ---- a stored call ----------------------------------------------------------------------

  var storedNodes = new Map();
  var storedAlertNodes = new Map();
  var storedShown = null;
  function renderStored() {
    var mine = stored;
    if (storedShown !== mine) { // another call: start from empty lists
      storedShown = mine;
      storedNodes.forEach(function (node) { node.remove(); });
      storedNodes.clear();
      storedAlertNodes.forEach(function (node) { node.remove(); });
      storedAlertNodes.clear();
    }
    setData(el.storedView, "call", mine.call || "");
    setData(el.storedView, "session", mine.session || "");
    setData(el.storedView, "state", mine.state || "");
    setText(el.storedName, mine.call || "—");
    setText(el.storedStatus, mine.message || "");
    var info = mine.info;
    setText(el.storedInfo, info ? "session " + info.session + " · started " +
      dateClock(info.started_at) + (info.ended_at !== null ? " · ended " +
      dateClock(info.ended_at) + " · lasted " + duration(info.ended_at - info.started_at) :
      " · the server stopped before the call ended") : "");
    var parties = mine.parties || [];
    reconcile(el.storedChannels, parties.map(function (p) { return p.name; }), storedNodes,
      function (name) {
        for (var i = 0; i < parties.length; i++) {
          if (parties[i].name === name) return makeChannel(name, parties[i].role, null);
        }
        return null;
      });
    var range = timeRange(parties);
    parties.forEach(function (party) {
      var node = storedNodes.get(party.name);
      var speech = node.querySelector(".channel-speech");
      setText(speech.querySelector(".text"), party.closeReason ? endedText(party) :
        "no close recorded");
      renderChannel(node, party, { range: range, labels: mine.labels, whole: true });
    });
    renderLegend(el.storedLegend, mine.labels || []);
    renderAlertList(el.storedAlerts, mine.alerts || [], mine.alertIndex || new Map(),
      storedAlertNodes, false);
    el.storedAlertsEmpty.hidden = (mine.alerts || []).length > 0 || mine.state !== "loaded";
  }

  // ---- charts -----------------------------------------------------------------------------

  function niceStep(span) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    for (var i = 0; i < steps.length; i++) if (span / steps[i] <= 7) return steps[i];
    return 7200;
  }

  function tickText(t, step) { return step >= 60 ? duration(t) : t + " s"; }

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

  // Draw a stream's probabilities over chart.range of stream time: the last CHART_SPAN_S of
  // it, or (chart.whole) all of it; skipped when nothing it shows has changed.
  function drawChart(canvas, s, chart) {
    var range = chart.range || [0, 0];
    var labels = chart.labels;
    var dpr = window.devicePixelRatio || 1;
    var cssW = canvas.clientWidth || canvas.width, cssH = canvas.clientHeight || canvas.height;
    var key = s.name + "#" + s.version + "|" + cssW + "x" + cssH + "@" + dpr + "|" +
      labels.join(",") + "|" + range.join(",") + "|" + chart.whole;
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
    // the axis grows from MIN_SPAN_S with the data, then (live) rolls once it spans CHART_SPAN_S
    var tFirst = range[0], tLast = range[1];
    var span = Math.max(MIN_SPAN_S, tLast - tFirst);
    if (!chart.whole) span = Math.min(CHART_SPAN_S, span);
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
      ctx.fillText(tickText(t, step), x(t), T + h + 6);
    }

    var hop = state.hello ? state.hello.hop_s : 0.5;
    var win = state.hello ? state.hello.window_s : 2.0;
    var gap = Math.max(4 * hop, win + hop); // farther apart than this: a pause, break the line
    var shown = s.history.filter(function (pt) { return pt.end >= t0; });
    ctx.lineWidth = chart.whole ? 1.5 : 2;
    ctx.lineJoin = "round";
    labels.forEach(function (label) {
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
    canvas.dataset.stream = s.name;
    canvas.setAttribute("aria-label", "class probabilities of stream " + s.name + " over " +
      "stream time, " + shown.length + " windows");
  }

  // ---- the frame --------------------------------------------------------------------------

  var renders = 0;
  function render() {
    renders += 1;
    var calls = collectCalls();
    pruneCalls(calls);
    var alertsOn = activeAlerts();
    var byAttention = liveByAttention(calls, alertsOn);
    chooseSelection(calls, byAttention);
    setText(el.serverClock, state.stats ? clock(serverNowS()) : "—");
    renderStats();
    // only the view on screen is drawn (a hidden one catches up when it is shown)
    if (state.view === "calls") {
      var ordered = Array.from(calls.values()).sort(callOrder);
      var s = state.selected !== null ? state.streams.get(state.selected) : null;
      renderCalls(ordered, alertsOn);
      renderCallView(s ? calls.get(s.call) : null, alertsOn);
      renderAlerts();
      renderCurrent(s || null);
    } else if (state.view === "wallboard") {
      renderWallboard(byAttention);
      renderPast();
    } else {
      renderStored();
    }
  }

  function showCallInUrl(call) {
    if (state.view !== "calls") return;
    var hash = "#calls?" + query({ call: call });
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  function select(name, pinned) {
    state.selected = name;
    state.pinned = pinned !== false;
    if (state.pinned) showCallInUrl(callName(name));
    scheduleRender();
  }

  function selectCall(call) {
    if (state.selected !== null && callName(state.selected) === call) {
      state.pinned = true;
      showCallInUrl(call);
      scheduleRender();
      return;
    }
    var first = null;
    state.streams.forEach(function (s) { if (first === null && s.call === call) first = s.name; });
    if (first !== null) select(first);
  }

  function route() {
    var hash = location.hash.replace(/^#/, "");
    var q = hash.indexOf("?");
    var view = q < 0 ? hash : hash.slice(0, q);
    return { view: VIEWS.indexOf(view) >= 0 ? view : "calls",
             params: new URLSearchParams(q < 0 ? "" : hash.slice(q + 1)) };
  }

  // Show the view the URL hash names; ``first``: the page just loaded (or reloaded).
  function applyRoute(first) {
    var r = route();
    state.view = r.view;
    VIEWS.forEach(function (name) { el.pages[name].hidden = name !== r.view; });
    el.navCalls.setAttribute("aria-current", r.view === "calls" ? "page" : "false");
    el.navWallboard.setAttribute("aria-current", r.view === "wallboard" ? "page" : "false");
    var call = r.params.get("call");
    if (r.view === "calls" && call) {
      if (first || state.replaying) state.wantedCall = call; // chosen after the backlog
      else selectCall(call);
    }
    if (r.view === "wallboard") loadPast(false);
    if (r.view === "stored") openStored(r.params);
    scheduleRender();
  }

  window.addEventListener("hashchange", function () { applyRoute(false); });
  el.pastMore.addEventListener("click", function () { loadPast(true); });
  window.addEventListener("resize", scheduleRender);
  setInterval(function () {
    if (state.streams.size || state.stats) scheduleRender(); // durations tick, ended calls age
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
    stored: function () { return stored; },
  };

  applyRoute(true);
  render();
  connect();
})();
