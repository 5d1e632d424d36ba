// The header's "signed in as": who GET /me says the sign-in belongs to (with accounts on).

import { whoAmI } from "./common.js";

const slot = document.getElementById("signed-in");
if (slot) {
  const who = await whoAmI();
  if (who.accounts && who.name) {
    slot.textContent = `${who.name} (${who.role})`;
    slot.title = `Signed in as ${who.name}, ${who.role === "admin" ? "an admin" : "a member"}`;
    slot.hidden = false;
  }
}
