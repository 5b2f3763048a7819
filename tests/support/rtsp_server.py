#!/usr/bin/env python3
"""A real RTSP server (GStreamer's gst-rtsp-server) for the runner tests.

usage: rtsp_server.py PORT MOUNT FILE.mp4

Serves FILE (H.264 in MP4) at rtsp://127.0.0.1:PORT/MOUNT in real time, from its start for
each client session. Prints "ready" once listening.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, mount, path = sys.argv[1], sys.argv[2], sys.argv[3]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={path} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    server.get_mount_points().add_factory("/" + mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on {port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
