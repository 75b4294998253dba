//! The russh `Handler`: thin. Each callback counts itself where russh would let a client loop,
//! then hands over to the step that owns it.
//!
//! The steps are boxed: russh keeps each callback's future inside the connection's own future,
//! which lives as long as the connection, so an unboxed step (database queries, the device login)
//! would make every idle session as large as the largest step ever was.

use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, MethodKind, MethodSet};

use super::Conn;

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.count_call()?;
        self.shared.set_user(user);
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.count_call()?;
        Ok(Box::pin(self.plain_key(user, key.public_key)).await)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        self.count_call()?;
        Ok(Box::pin(self.certificate(user, cert)).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.count_call()?;
        // The first answer is the TOTP code (an empty one if the client sent none).
        let answer = response.map(|mut r| {
            r.next()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        });
        Ok(Box::pin(self.keyboard_interactive(user, answer)).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        Box::pin(self.both_factors_passed(session.handle())).await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(self.open_session(channel, reply, session.handle())).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let originator = (originator_address, originator_port);
        Box::pin(self.open_forward(channel, host, port, originator, reply)).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwards (ssh -R) would open a path into the vendor's network: never.
        Ok(false)
    }
}
