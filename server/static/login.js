// The login page: show why the last attempt failed (?failed=1); the form itself needs no script.
(function () {
  "use strict";
  if (new URLSearchParams(location.search).has("failed")) {
    document.getElementById("login-failed").hidden = false;
  }
})();
