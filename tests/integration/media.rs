//! Test media made with ffmpeg from opencv-doc's pedestrian video, cached beside the build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub const VTEST: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";
pub const BASKETBALL: &str = "/usr/share/doc/opencv-doc/examples/data/basketball1.png";

pub struct Media {
    /// 640x480 H.264, 20 s at 10 fps: pedestrians in every frame.
    pub people: PathBuf,
    /// 640x480 H.264, 3 s of colour bars: nothing to detect.
    pub bars: PathBuf,
    /// 640x480 H.264, 5 s of pedestrians: a short finite source.
    pub short: PathBuf,
    /// 640x480 H.264, 10 s at 10 fps on grey: one person (cut from basketball1.png) walks right
    /// from x 10 to 530 in 4 s, stands 1 s, walks back in 4 s, stands 1 s. [`WALKER_PATH`].
    pub walker: PathBuf,
    /// The walker clip six times over (60 s): a camera for a person to watch live.
    pub walker_loop: PathBuf,
}

/// Where the walker's box (100 x 293 px, top at y 60) is at time `t` (s): its left edge.
pub fn walker_x(t: f64) -> f64 {
    match t {
        t if t < 4.0 => 10.0 + 130.0 * t,
        t if t < 5.0 => 530.0,
        t if t < 9.0 => 530.0 - 130.0 * (t - 5.0),
        _ => 10.0,
    }
}

/// The same path as ffmpeg's overlay expression.
const WALKER_PATH: &str = "if(lt(t,4),10+130*t,if(lt(t,5),530,if(lt(t,9),530-130*(t-5),10)))";

/// ffmpeg filter: the person of basketball1.png (input `person`) walking [`WALKER_PATH`] over
/// the 640x480 stream `background`.
fn walker_over(background: &str, person: &str) -> String {
    format!(
        "[{person}]crop=140:410:28:70,scale=100:293,format=yuv420p[p];\
         [{background}][p]overlay=x='{WALKER_PATH}':y=60:shortest=1"
    )
}

pub fn media() -> &'static Media {
    static MEDIA: OnceLock<Media> = OnceLock::new();
    MEDIA.get_or_init(|| {
        // Cached beside the build (target/tmp): made once per checkout.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runner-media");
        std::fs::create_dir_all(&dir).unwrap();
        let make = |name: &str, input: &[&str]| {
            let out = dir.join(name);
            if !out.exists() {
                let tmp = dir.join(format!("{name}.{}.tmp.mp4", std::process::id()));
                let status = Command::new("ffmpeg")
                    .args(["-loglevel", "error", "-y"])
                    .args(input)
                    .args([
                        "-t",
                        "20",
                        "-vf",
                        "scale=640:480",
                        "-c:v",
                        "libx264",
                        "-preset",
                        "veryfast",
                        "-pix_fmt",
                        "yuv420p",
                        "-g",
                        "10",
                        "-movflags",
                        "+faststart",
                        "-an",
                    ])
                    .arg(&tmp)
                    .status()
                    .expect("ffmpeg (scripts/setup installs it)");
                assert!(status.success(), "ffmpeg failed making {name}");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        };
        let made = Media {
            people: make("people.mp4", &["-i", VTEST]),
            bars: make("bars.mp4", &["-f", "lavfi", "-i", "testsrc=size=640x480:rate=10:duration=3"]),
            short: make("short.mp4", &["-t", "5", "-i", VTEST]),
            walker: {
                let out = dir.join("walker.mp4");
                if !out.exists() {
                    let tmp = dir.join(format!("walker.{}.tmp.mp4", std::process::id()));
                    let filter = walker_over("0", "1");
                    let status = Command::new("ffmpeg")
                        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=640x480:r=10:d=10"])
                        .args(["-loop", "1", "-i", BASKETBALL, "-filter_complex", &filter])
                        .args(["-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
                        .args(["-g", "10", "-movflags", "+faststart", "-an"])
                        .arg(&tmp)
                        .status()
                        .expect("ffmpeg (scripts/setup installs it)");
                    assert!(status.success(), "ffmpeg failed making walker.mp4");
                    std::fs::rename(&tmp, &out).unwrap();
                }
                out
            },
            walker_loop: Path::new("unset").into(),
        };
        let out = dir.join("walker_loop.mp4");
        if !out.exists() {
            let tmp = dir.join(format!("walker_loop.{}.tmp.mp4", std::process::id()));
            let status = Command::new("ffmpeg")
                .args(["-loglevel", "error", "-y", "-stream_loop", "5", "-i"])
                .arg(&made.walker)
                .args(["-c", "copy", "-movflags", "+faststart"])
                .arg(&tmp)
                .status()
                .expect("ffmpeg (scripts/setup installs it)");
            assert!(status.success(), "ffmpeg failed making walker_loop.mp4");
            std::fs::rename(&tmp, &out).unwrap();
        }
        Media { walker_loop: out, ..made }
    })
}

pub fn manifest() -> PathBuf {
    models_dir().join("ssdlite_person_300.toml")
}

/// The shipped catalogue.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn free_port() -> u16 {
    vap_dev::devstack::free_port().expect("a free port")
}

/// GStreamer's RTSP server serving a file at rtsp://127.0.0.1:PORT/cam, killed on drop.
pub struct RtspServer {
    child: Child,
}

impl RtspServer {
    pub fn start(port: u16, file: &Path) -> RtspServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rtsp_server.py");
        // Debian's python: python3-gi and GStreamer's bindings are installed for it, not for
        // any other python3 on PATH.
        let mut cmd = Command::new("/usr/bin/python3");
        vap_core::sys::die_with_parent(&mut cmd, vap_core::sys::SIGKILL);
        let mut child = cmd
            .arg(script)
            .args([&port.to_string(), "cam", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with GStreamer's RTSP server (scripts/setup installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "RTSP server did not start");
        RtspServer { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP server that sends the first third of `path`, then holds the connection silently:
/// a decoder with a long read timeout hangs in its read.
pub async fn serve_then_stall(path: PathBuf) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = std::fs::read(path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut req = [0u8; 4096];
            let _ = stream.read(&mut req).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: {}\r\n\r\n", data.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&data[..data.len() / 3]).await;
            held.push(stream);
        }
    });
    addr
}

/// 640x480 H.264 at 10 fps, 70 s, mostly still, as many cameras are: 20 s of an empty grey
/// picture, the walker clip (one person walks in, stands, walks back), 5 s of pedestrians, their
/// last frame held for 30 s, and 5 s more of them. Motion gating's clip.
pub fn still_heavy() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        still_heavy_clip(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("runner-media"), 10, "640:480", 10)
    })
}

/// The mostly still clip of the motion-gating test and the runner benchmark, 70 s at `fps` and
/// `size` ("W:H") with a key frame every `gop` frames: 20 s of an empty grey picture, the walker
/// (10 s, [`WALKER_PATH`]), 5 s of vtest.avi's pedestrians, their last frame held 30 s, 5 s more.
/// Made once per recipe in `dir`.
pub fn still_heavy_clip(dir: &Path, fps: u32, size: &str, gop: u32) -> PathBuf {
    use sha2::Digest;
    let same = format!("fps={fps},scale={size},setsar=1,format=yuv420p");
    let filter = format!(
        "[0]split[g0][g1];[g0]trim=0:20,{same}[a];[g1]trim=20:30,setpts=PTS-STARTPTS[g];\
         {},{same}[b];\
         [2]{same},tpad=stop_mode=clone:stop_duration=30[c];[3]{same}[d];[a][b][c][d]concat=n=4:v=1:a=0[v]",
        walker_over("g", "1")
    );
    let recipe = hex::encode(&sha2::Sha256::digest(format!("{filter} {gop}"))[..4]);
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(format!("still_heavy_{recipe}.mp4"));
    if !out.exists() {
        let tmp = dir.join(format!("still_heavy_{recipe}.{}.tmp.mp4", std::process::id()));
        let status = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", &format!("color=c=gray:s=640x480:r={fps}:d=30")])
            .args([
                "-loop", "1", "-t", "10", "-i", BASKETBALL, "-t", "5", "-i", VTEST, "-ss", "5", "-t", "5", "-i", VTEST,
            ])
            .args(["-filter_complex", &filter, "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast"])
            .args(["-g", &gop.to_string(), "-movflags", "+faststart"])
            .arg(&tmp)
            .status()
            .expect("ffmpeg (scripts/setup installs it)");
        assert!(status.success(), "ffmpeg failed making {}", out.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}
