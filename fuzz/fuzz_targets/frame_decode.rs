//! Feeds arbitrary bytes to the frame decoder: it must never panic, and whatever it accepts
//! must re-encode to a frame that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_proto::{FrameConfig, frame};

fuzz_target!(|data: &[u8]| {
    let config = FrameConfig::default();
    if let Ok((msg, used)) = frame::decode_frame(data, &config) {
        assert!(used <= data.len());
        let again = frame::encode_frame(&msg, &config).expect("a decoded message re-encodes");
        let (back, _) = frame::decode_frame(&again, &config).expect("its frame decodes");
        assert_eq!(back, msg);
    }
    // The body decoder alone (kind + payload), as a stream reader calls it.
    let _ = frame::decode_body(data);
});
