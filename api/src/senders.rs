//! The notifier role built from [`NotifySettings`]: its templates, one sender per channel
//! (real or dry run), and its limits. Every setting is checked here, at start-up.

use anyhow::{Context, bail};
use tally_domain::PhoneNumber;
use tally_processor::notifier::NotifierSettings;
use tally_processor::notify::{
    DryRunEmailSender, DryRunSmsSender, EmailSender, Notifier, SmsFrom, SmsSender, SmsSettings,
    SmtpCredentials, SmtpSender, SmtpSettings, TemplateSource, Templates, TwilioSmsSender,
};

use crate::settings::NotifySettings;

/// The templates and senders the settings ask for. Must run within a Tokio runtime (the SMTP
/// pool starts a task).
pub fn notifier(settings: &NotifySettings) -> anyhow::Result<Notifier> {
    let source = match &settings.notify_templates_dir {
        Some(dir) => TemplateSource::Directory(dir.clone()),
        None => TemplateSource::Embedded,
    };
    let templates = Templates::load(&source).context("cannot load the notification templates")?;
    Ok(Notifier::new(
        templates,
        email_sender(settings)?,
        sms_sender(settings)?,
    ))
}

/// The notifier's limits. The lease must outlast the slowest send, or a second sender could
/// take a notification that the first is still sending.
pub fn notifier_settings(settings: &NotifySettings) -> anyhow::Result<NotifierSettings> {
    let slowest_send_ms = settings.smtp_send_timeout_ms.max(settings.sms_timeout_ms);
    if settings.notify_lease_ms <= slowest_send_ms {
        bail!(
            "--notify-lease-ms ({}) must be longer than the slowest send ({slowest_send_ms} ms)",
            settings.notify_lease_ms
        );
    }
    let notifier = NotifierSettings {
        attempts_max: settings.notify_attempts_max,
        retry_delay_ms_min: settings.notify_retry_delay_ms_min,
        retry_delay_ms_max: settings.notify_retry_delay_ms_max,
        lease_ms: settings.notify_lease_ms,
        sends_in_flight_max: settings.notify_sends_in_flight_max,
        ..NotifierSettings::default()
    };
    notifier
        .validate()
        .map_err(|problem| anyhow::anyhow!("invalid notifier settings: {problem}"))?;
    Ok(notifier)
}

fn email_sender(settings: &NotifySettings) -> anyhow::Result<Box<dyn EmailSender>> {
    if settings.email_dry_run {
        return Ok(Box::new(DryRunEmailSender));
    }
    let host = (settings.smtp_host.clone()).context("--smtp-host is required to send email")?;
    let from = (settings.smtp_from.clone()).context("--smtp-from is required to send email")?;
    let security = settings.smtp_security;
    let credentials = match (&settings.smtp_username, &settings.smtp_password) {
        (Some(username), Some(password)) => Some(SmtpCredentials {
            username: username.clone(),
            password: password.clone(),
        }),
        (None, None) => None,
        _ => bail!("--smtp-username and --smtp-password go together"),
    };
    let smtp = SmtpSettings {
        port: settings.smtp_port.unwrap_or(security.default_port()),
        credentials,
        connect_timeout_ms: settings.smtp_connect_timeout_ms,
        send_timeout_ms: settings.smtp_send_timeout_ms,
        connections_max: settings.smtp_connections_max,
        ..SmtpSettings::new(host, security, from)
    };
    let sender = SmtpSender::new(smtp).context("invalid smtp settings")?;
    Ok(Box::new(sender))
}

fn sms_sender(settings: &NotifySettings) -> anyhow::Result<Box<dyn SmsSender>> {
    if settings.sms_dry_run {
        return Ok(Box::new(DryRunSmsSender));
    }
    let account_sid = (settings.sms_account_sid.clone())
        .context("--sms-account-sid is required to send text messages")?;
    let auth_token = (settings.sms_auth_token.clone())
        .context("--sms-auth-token is required to send text messages")?;
    let from = match (
        &settings.sms_messaging_service_sid,
        &settings.sms_from_number,
    ) {
        (Some(sid), None) => SmsFrom::MessagingService(sid.clone()),
        (None, Some(number)) => {
            let number = PhoneNumber::parse(number)
                .map_err(|_| anyhow::anyhow!("--sms-from-number must be an E.164 number"))?;
            SmsFrom::Number(number)
        }
        _ => bail!("give one of --sms-messaging-service-sid and --sms-from-number"),
    };
    let sms = SmsSettings {
        base_url: settings.sms_base_url.clone(),
        timeout_ms: settings.sms_timeout_ms,
        ..SmsSettings::twilio(account_sid, auth_token, from)
    };
    let sender = TwilioSmsSender::new(sms).context("invalid sms settings")?;
    Ok(Box::new(sender))
}
