//! Request and response bodies: large ones in both framings and both directions, compared
//! byte for byte, and `Expect: 100-continue`.

use ringwall_tests::wire::encode_chunked;
use ringwall_tests::*;

const BIG: usize = 8 << 20;

/// An origin serving `data` at `/big` (chunked when `sizes` is given) and `small` elsewhere.
fn big_origin(data: Vec<u8>, sizes: Option<Vec<usize>>) -> Origin {
    Origin::start(move |req| match (req.path.as_str(), &sizes) {
        ("/big", Some(sizes)) => Reply::new(200).chunked(data.clone(), sizes.clone()),
        ("/big", None) => Reply::ok(data.clone()),
        _ => Reply::ok("small"),
    })
}

/// An origin answering uploads with `LEN FNV` of the body it received.
fn digest_origin() -> Origin {
    Origin::start(|req| Reply::ok(format!("{} {:016x}", req.body.len(), fnv1a(&req.body))))
}

#[test]
fn chunked_download_of_8_mib_arrives_intact() {
    within(TEST_LIMIT, || {
        let mut rng = Rng::new(0x5eed_0001);
        let data = rng.bytes(BIG);
        let origin = big_origin(data.clone(), Some(rng.chunk_sizes(257)));
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp = client.get("/big");
        assert_eq!(resp.status, 200, "headers: {:?}", resp.headers);
        assert_same_bytes(&resp.body, &data, "chunked download");
        // The connection is still framed correctly after the big body.
        let after = client.get("/after");
        assert_eq!((after.status, after.text().as_str()), (200, "small"));
    })
}

#[test]
fn content_length_download_of_8_mib_arrives_intact() {
    within(TEST_LIMIT, || {
        let data = Rng::new(0x5eed_0002).bytes(BIG);
        let origin = big_origin(data.clone(), None);
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp = client.get("/big");
        assert_eq!(resp.status, 200, "headers: {:?}", resp.headers);
        assert_same_bytes(&resp.body, &data, "Content-Length download");
        let after = client.get("/after");
        assert_eq!((after.status, after.text().as_str()), (200, "small"));
    })
}

#[test]
fn chunked_upload_of_8_mib_arrives_intact() {
    within(TEST_LIMIT, || {
        let mut rng = Rng::new(0x5eed_0003);
        let data = rng.bytes(BIG);
        let origin = digest_origin();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let mut raw =
            b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        raw.extend_from_slice(&encode_chunked(&data, &rng.chunk_sizes(301)));
        let resp = client.request(&raw);

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), format!("{BIG} {:016x}", fnv1a(&data)));
        assert_same_bytes(&origin.single_request().body, &data, "chunked upload");
        let after = client.get("/after");
        assert_eq!(after.status, 200, "{after:?}");
    })
}

#[test]
fn content_length_upload_of_8_mib_arrives_intact() {
    within(TEST_LIMIT, || {
        let data = Rng::new(0x5eed_0004).bytes(BIG);
        let origin = digest_origin();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let mut raw =
            format!("PUT /upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {BIG}\r\n\r\n")
                .into_bytes();
        raw.extend_from_slice(&data);
        let resp = client.request(&raw);

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), format!("{BIG} {:016x}", fnv1a(&data)));
        let req = origin.single_request();
        assert_eq!(req.method, "PUT");
        assert_same_bytes(&req.body, &data, "Content-Length upload");
        let after = client.get("/after");
        assert_eq!(after.status, 200, "{after:?}");
    })
}

#[test]
fn empty_post_reaches_the_origin() {
    within(TEST_LIMIT, || {
        let origin = digest_origin();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        let resp = client
            .request(b"POST /empty HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 0\r\n\r\n");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), format!("0 {:016x}", fnv1a(b"")));
        assert_eq!(origin.single_request().method, "POST");
    })
}

#[test]
fn expect_100_continue_gets_continue_before_the_body_is_sent() {
    within(TEST_LIMIT, || {
        let origin = digest_origin();
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));

        client.send(
            b"POST /expect HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
        );
        let interim = client.read_response("POST");
        assert_eq!(
            interim.status, 100,
            "expected 100 Continue before sending the body: {interim:?}"
        );
        client.send(b"hello world");
        let resp = client.read_final_response("POST");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), format!("11 {:016x}", fnv1a(b"hello world")));
        assert_eq!(origin.single_request().body, b"hello world");
    })
}

/// Bodies on either side of the sizes where the relay changes how it moves them: copied
/// next to the head (16 KiB and under, when whole), sent with the head in one gathered
/// write (the part that came with it), read 64 KiB at a time. One keep-alive connection
/// carries them all, so a body cut or overrun shows in the next response.
#[test]
fn content_length_bodies_around_the_relay_sizes_arrive_intact_on_one_connection() {
    within(TEST_LIMIT, || {
        let sizes = [
            0,
            1,
            16 << 10,
            (16 << 10) + 1,
            40 << 10,
            64 << 10,
            (64 << 10) + 1,
            (128 << 10) + 7,
            300 << 10,
        ];
        let mut rng = Rng::new(0x5eed_0007);
        let bodies: Vec<Vec<u8>> = sizes.iter().map(|&n| rng.bytes(n)).collect();
        let served = bodies.clone();
        let origin = Origin::start(move |req| {
            let i: usize = req.path.trim_start_matches("/b").parse().unwrap_or(0);
            Reply::ok(served.get(i).cloned().unwrap_or_default())
        });
        let gw = gateway_to(&origin);
        let mut client = Client::connect(gw.addr("api"));
        for round in 0..3 {
            for (i, body) in bodies.iter().enumerate() {
                let resp = client.get(&format!("/b{i}"));
                assert_eq!(resp.status, 200, "round {round}, {} bytes", body.len());
                assert_same_bytes(&resp.body, body, &format!("{} bytes", body.len()));
            }
        }
        assert_eq!(
            origin.connections(),
            1,
            "the upstream connection was reused throughout"
        );
    })
}
