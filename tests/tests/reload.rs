//! Reload on SIGHUP: a valid change takes effect on every worker without dropping a
//! connection; an invalid one is reported and the running configuration stays.

use std::time::Duration;

use ringwall_tests::client;
use ringwall_tests::yaml::*;
use ringwall_tests::*;

fn named_origin(name: &'static str) -> Origin {
    Origin::start(move |req| Reply::ok(format!("{name} {}", req.path)))
}

#[test]
fn a_route_change_applies_on_an_open_keep_alive_connection() {
    within(TEST_LIMIT, || {
        let (a, b) = (named_origin("a"), named_origin("b"));
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &["--no-watch"]);
        let mut client = Client::connect(gw.addr("api"));
        assert_eq!(client.get("/x").text(), "a /x");

        let verdict = gw.reload_with("api.yaml", Some(&simple_api(&b.url())));
        assert_eq!(verdict, "reloaded generation=2");

        // The same connection, now routed by the new configuration.
        assert_eq!(client.get("/y").text(), "b /y");
        assert_eq!(Client::connect(gw.addr("api")).get("/z").text(), "b /z");
    })
}

#[test]
fn an_invalid_change_is_refused_and_the_old_configuration_stays() {
    within(TEST_LIMIT, || {
        let a = named_origin("a");
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &["--no-watch"]);

        let broken = simple_api(&a.url()).replace("  services:", "  servces:");
        let verdict = gw.reload_with("api.yaml", Some(&broken));
        assert!(
            verdict.starts_with("reload-failed generation=2"),
            "{verdict}"
        );
        // The reload error names the file, line and field.
        let stderr = gw.wait_stderr("servces", Duration::from_secs(5));
        assert!(
            stderr.contains("api.yaml:7: ApiInstance/api: spec.servces"),
            "{stderr}"
        );
        assert_eq!(
            Client::connect(gw.addr("api")).get("/still").text(),
            "a /still"
        );

        // And a later valid change still goes through.
        let verdict = gw.reload_with("api.yaml", Some(&simple_api(&a.url())));
        assert_eq!(verdict, "reloaded generation=3");
    })
}

#[test]
fn listeners_are_added_and_removed_by_a_reload() {
    within(TEST_LIMIT, || {
        let (a, b) = (named_origin("a"), named_origin("b"));
        let first = api_to(ANY_PORT, &a.url(), "/");
        let second = api_instance(
            "second",
            ANY_PORT,
            &[InlineService::new("up", &b.url(), vec![Route::all()])],
        );
        let mut gw = Gateway::start(&[("api.yaml", &first)], &["--no-watch"]);
        let old = gw.addr("api");
        let mut kept = Client::connect(old);
        assert_eq!(kept.get("/1").text(), "a /1");

        // Added: a new ApiInstance on a port of its own starts serving.
        gw.replace_file("second.yaml", &second);
        gw.signal(libc::SIGHUP);
        let line = gw.wait_line(|l| l.starts_with("listening "), Duration::from_secs(10));
        assert!(line.ends_with(" second"), "{line}");
        let added: std::net::SocketAddr = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(
            gw.wait_line(|l| l.starts_with("reloaded"), Duration::from_secs(10)),
            "reloaded generation=2"
        );
        assert_eq!(Client::connect(added).get("/2").text(), "b /2");
        assert_eq!(
            kept.get("/3").text(),
            "a /3",
            "the first listener is untouched"
        );

        // Removed: the first stops accepting, and its idle connection is closed, as in a
        // drain (one busy at that moment would finish its exchange first).
        assert_eq!(gw.reload_with("api.yaml", None), "reloaded generation=3");
        kept.assert_closed();
        assert!(
            std::net::TcpStream::connect(old).is_err(),
            "the removed listener still accepts"
        );
        assert_eq!(Client::connect(added).get("/5").text(), "b /5");
    })
}

#[test]
fn saving_a_file_reloads_without_a_signal() {
    within(TEST_LIMIT, || {
        let (a, b) = (named_origin("a"), named_origin("b"));
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &[]);
        assert_eq!(
            gw.save("api.yaml", &simple_api(&b.url())),
            "reloaded generation=2"
        );
        assert_eq!(Client::connect(gw.addr("api")).get("/s").text(), "b /s");
        // Saving the same bytes again is not a change: the next real change is generation 3.
        gw.replace_file("api.yaml", &simple_api(&b.url()));
        assert_eq!(
            gw.save("api.yaml", &simple_api(&a.url())),
            "reloaded generation=3"
        );
    })
}

#[test]
fn reloads_under_load_lose_no_request_and_cut_no_stream() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    within(Duration::from_secs(60), || {
        let (a, b) = (named_origin("a"), named_origin("b"));
        let body: Vec<u8> = (0..200u32).flat_map(|i| i.to_le_bytes()).collect();
        let stream_body = body.clone();
        let streaming = Origin::start(move |_| {
            Reply::new(200)
                .chunked(stream_body.clone(), vec![40])
                .pace(Duration::from_millis(10))
        });
        let config = |up: &str| {
            documents(&[&api_instance(
                "api",
                ANY_PORT,
                &[
                    InlineService::new(
                        "stream",
                        &streaming.url(),
                        vec![Route::all().rule(Rule::path("/stream"))],
                    ),
                    InlineService::new("up", up, vec![Route::all()]),
                ],
            )])
        };
        let mut gw = Gateway::start(&[("api.yaml", &config(&a.url()))], &[]);
        let addr = gw.addr("api");

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let load: Vec<_> = (0..4)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                thread::spawn(move || -> Result<(), String> {
                    let mut client = Client::try_connect(addr).map_err(|e| e.to_string())?;
                    while !stop.load(Ordering::Relaxed) {
                        client
                            .send_lenient(client::get("/load").as_bytes())
                            .map_err(|e| e.to_string())?;
                        let resp = client.try_read_response("GET").map_err(|e| e.to_string())?;
                        if resp.status != 200 {
                            return Err(format!("status {}", resp.status));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        let stream = thread::spawn(move || Client::connect(addr).get("/stream"));

        for i in 0..10 {
            let up = if i % 2 == 0 { b.url() } else { a.url() };
            let verdict = gw.save("api.yaml", &config(&up));
            assert_eq!(
                verdict,
                format!("reloaded generation={}", i + 2),
                "stderr:\n{}",
                gw.stderr()
            );
        }
        stop.store(true, Ordering::Relaxed);
        for (i, t) in load.into_iter().enumerate() {
            t.join()
                .expect("load thread")
                .unwrap_or_else(|e| panic!("load client {i}: {e}"));
        }
        let streamed = stream.join().expect("stream thread");
        assert_eq!(streamed.status, 200);
        assert_same_bytes(
            &streamed.body,
            &body,
            "the stream that ran across ten reloads",
        );
        assert!(done.load(Ordering::Relaxed) > 100, "the load kept flowing");
    })
}

#[test]
fn the_runtime_log_level_comes_from_the_configuration_and_follows_reloads() {
    within(TEST_LIMIT, || {
        let down = closed_port();
        let level = |l: &str| {
            documents(&[
                &simple_api(&format!("http://{}", down.addr())),
                &configuration(
                    "logs",
                    &format!("logging:\n  runtimeLogs:\n    logLevel: {l}\n"),
                ),
            ])
        };
        let mut gw = Gateway::start(&[("api.yaml", &level("warn"))], &["--no-watch"]);
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 502);
        assert!(
            !gw.stderr().contains(" INFO "),
            "info lines at warn:\n{}",
            gw.stderr()
        );

        assert_eq!(
            gw.reload_with("api.yaml", Some(&level("debug"))),
            "reloaded generation=2"
        );
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 502);
        // The 502's cause is logged at debug level.
        gw.wait_stderr("exchange failed", Duration::from_secs(5));
    })
}
