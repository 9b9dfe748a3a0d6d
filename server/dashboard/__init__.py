"""The ops dashboard at /ui: one server-rendered page (Jinja2 and inline SVG charts, no JavaScript, no assets to
fetch), read-only, refreshed by the browser every REFRESH_S seconds."""
