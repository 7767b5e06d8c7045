//! Release and power plans over time, through the broker with the clock in the test's hands
//! (no sleeps): a disconnect → a forced logout after an hour, carried out by the desktop's
//! agent → the release → a shutdown and the machine's deletion; a restart in the middle
//! resumes the timers; a reconnect cancels a chain; idle reports, an unlock and "active
//! again"; a forced logout with no agent to carry it out; reports for another user; a user
//! back while the run waits on a center; failed power actions tried again.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use gatehouse::auth::{Directory, LdapDirectory};
use gatehouse::broker::Broker;
use gatehouse::broker::control::{ControlFuture, DesktopAction, DesktopControl};
use gatehouse::broker::plans::{Reporter, desktop_history, desktop_timers, logout_request};
use gatehouse::model::desktop::Desktop;
use gatehouse::model::directory::Security;
use gatehouse::model::history::AgentTokenHash;
use gatehouse::model::location::ClientFacts;
use gatehouse::model::plan::{PowerAction, PowerPlan, PowerRule, ReleasePlan};
use gatehouse::model::policy::Policy;
use gatehouse::model::timer::{DesktopEvent, DesktopUse, TimerAction, UseState};
use gatehouse::store::Store;

use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

/// A desktop control that records what it was asked, and does it.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, DesktopAction)>>);

impl DesktopControl for Recorder {
    fn act<'a>(&'a self, desktop: &'a Desktop, action: DesktopAction) -> ControlFuture<'a> {
        self.0
            .lock()
            .expect("lock")
            .push((desktop.name.clone(), action));
        Box::pin(async { Ok(()) })
    }
}

impl Recorder {
    fn seen(&self) -> Vec<(String, DesktopAction)> {
        self.0.lock().expect("lock").clone()
    }
}

/// The test's clock.
#[derive(Clone)]
struct Clock(Arc<Mutex<DateTime<Utc>>>);

impl Clock {
    fn at(t: DateTime<Utc>) -> Self {
        Clock(Arc::new(Mutex::new(t)))
    }
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("lock") = t;
    }
    fn install(&self, broker: &Broker) {
        let inner = self.0.clone();
        broker.set_clock(Arc::new(move || *inner.lock().expect("lock")));
    }
}

/// The Lab (deletable desktops), with a policy whose plans log a disconnected user out after
/// an hour, release at logout, shut the machine down 5 minutes after release and delete it
/// 30 minutes after release, and power it off after 20 idle minutes.
fn seed(store: &Store, desktops: usize) {
    crate::lab::seed(store, "slapd", desktops, &[("generated", "user")]);
    let power = PowerPlan {
        id: "chain".into(),
        name: "Chain".into(),
        on_disconnect: PowerRule::default(),
        on_logout: PowerRule::default(),
        on_release: PowerRule {
            after_minutes: 5,
            action: PowerAction::Shutdown,
        },
        on_idle: PowerRule {
            after_minutes: 20,
            action: PowerAction::PowerOff,
        },
    };
    let release = ReleasePlan {
        id: "chain".into(),
        name: "Chain".into(),
        logout_after_disconnect_minutes: Some(60),
        release_after_logout_minutes: Some(0),
        release_after_disconnect_minutes: None,
        delete_after_release_minutes: Some(30),
    };
    store.put("chain", &power).expect("power plan");
    store.put("chain", &release).expect("release plan");
    let mut policy: Policy = store.get("lab").expect("get").expect("policy");
    policy.entries[0].power_plan = "chain".into();
    policy.entries[0].release_plan = "chain".into();
    store.put("lab", &policy).expect("policy");
    for (id, mut d) in store.list::<Desktop>().expect("desktops") {
        d.deletable = true;
        store.put(&id, &d).expect("desktop");
    }
}

fn broker(store: &Store, slapd: Option<&Slapd>) -> Arc<Broker> {
    let broker = crate::fixture::broker(store);
    if let Some(slapd) = slapd {
        let server = slapd.auth_server(Security::Ldaps);
        let directory: Arc<dyn Directory> = Arc::new(LdapDirectory::new(server.clone()));
        broker.set_directories(vec![(server, directory)]);
    }
    Arc::new(broker)
}

fn actions(store: &Store, desktop: &str) -> Vec<String> {
    desktop_history(store, desktop, 100)
        .expect("history")
        .into_iter()
        .rev()
        .map(|h| format!("{}:{}", h.action, if h.ok { "ok" } else { "failed" }))
        .collect()
}

fn pending(store: &Store, desktop: &str) -> Vec<(TimerAction, DateTime<Utc>)> {
    desktop_timers(store, desktop)
        .expect("timers")
        .into_iter()
        .map(|t| (t.action, t.due))
        .collect()
}

#[tokio::test]
async fn a_disconnect_leads_to_logout_release_shutdown_and_deletion_across_a_restart() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 21, 9, 0, 0)
        .single()
        .expect("time");
    let clock = Clock::at(t0);
    let recorder = Recorder::default();
    let address: IpAddr = "192.0.2.10".parse().expect("ip");
    let facts = ClientFacts::from_address(address);
    let desk;
    {
        let store = Store::open(dir.path()).expect("store");
        seed(&store, 2);
        let broker = broker(&store, Some(&slapd));
        clock.install(&broker);
        let alice = broker
            .sign_in("user00001", GENERATED_PASSWORD, None, &facts)
            .await
            .expect("signed in");
        let offer = broker.offer(&alice).await.expect("offer");
        let (d, _) = broker
            .connect(&alice, &offer.desktops[0].id, address)
            .await
            .expect("connected");
        desk = d.id.clone();
        // The desktop has an agent.
        store
            .put(&desk, &AgentTokenHash { hash: "h".into() })
            .expect("agent token");

        // The disconnect: a forced logout in an hour, nothing else yet.
        let outcome = broker
            .report_event(
                &desk,
                DesktopEvent::Disconnect,
                Reporter::Client(alice.user.clone()),
            )
            .await
            .expect("reported");
        assert_eq!(
            outcome.sessions_ended, 1,
            "the session (and its tunnels) ended"
        );
        assert_eq!(
            pending(&store, &desk),
            [(TimerAction::ForcedLogout, t0 + Duration::hours(1))]
        );

        // 59 minutes on: nothing is due.
        clock.set(t0 + Duration::minutes(59));
        let run = broker.run_plan_timers(&recorder).await.expect("run");
        assert_eq!(run.ran, 0);

        // 61 minutes on: the forced logout asks the agent to log the user out; the desktop
        // stays assigned until the agent says it did.
        clock.set(t0 + Duration::minutes(61));
        let run = broker.run_plan_timers(&recorder).await.expect("run");
        assert_eq!((run.ran, run.failed.len()), (1, 0), "{}", run.summary());
        let d: Desktop = store.get(&desk).expect("get").expect("desktop");
        assert_eq!(d.assigned_user, Some(alice.user.key()), "not released yet");
        let asked = logout_request(&store, &desk)
            .expect("read")
            .expect("a logout is asked of the agent");
        assert_eq!(asked.username(), "user00001");
        let shown: DesktopUse = store.get(&desk).expect("get").expect("use");
        assert_eq!(
            (shown.state, shown.forced),
            (UseState::LogoutRequested, true)
        );
        assert!(pending(&store, &desk).is_empty());

        // The agent logs the user out and says so: the release after logout runs at once,
        // and sets the shutdown and the deletion.
        let now = t0 + Duration::minutes(62);
        clock.set(now);
        broker
            .report_event(
                &desk,
                DesktopEvent::Logout,
                Reporter::Agent(Some("EXAMPLE\\USER00001".into())),
            )
            .await
            .expect("logout reported");
        assert!(
            logout_request(&store, &desk).expect("read").is_none(),
            "done"
        );
        let run = broker.run_plan_timers(&recorder).await.expect("run");
        assert_eq!((run.ran, run.failed.len()), (1, 0), "{}", run.summary());
        let d: Desktop = store.get(&desk).expect("get").expect("desktop");
        assert_eq!(d.assigned_user, None, "released");
        assert_eq!(
            pending(&store, &desk),
            [
                (
                    TimerAction::Power(PowerAction::Shutdown),
                    now + Duration::minutes(5)
                ),
                (TimerAction::DeleteVm, now + Duration::minutes(30)),
            ]
        );
        assert!(recorder.seen().is_empty());
    }

    // The appliance stops and starts again (a new broker on the same store); meanwhile the
    // shutdown came due. It runs at the first run after the start, once.
    let store = Store::open(dir.path()).expect("reopen");
    let broker = broker(&store, None);
    clock.install(&broker);
    clock.set(t0 + Duration::minutes(70));
    let run = broker.run_plan_timers(&recorder).await.expect("run");
    assert_eq!(run.ran, 1, "{}", run.summary());
    let run = broker.run_plan_timers(&recorder).await.expect("run");
    assert_eq!(run.ran, 0, "a timer runs once");
    assert_eq!(
        recorder.seen(),
        [("lab-000".to_string(), DesktopAction::Shutdown)]
    );

    clock.set(t0 + Duration::minutes(92));
    let run = broker.run_plan_timers(&recorder).await.expect("run");
    assert_eq!(run.ran, 1);
    assert_eq!(
        recorder.seen().last(),
        Some(&("lab-000".to_string(), DesktopAction::Delete))
    );
    assert!(pending(&store, &desk).is_empty());
    assert_eq!(
        actions(&store, &desk),
        [
            "event.disconnect:ok",
            "timer.forced_logout:ok",
            "event.logout:ok",
            "event.release:ok",
            "timer.release:ok",
            "timer.power:ok",
            "timer.delete_vm:ok",
        ]
    );
    let audit: Vec<String> = store
        .list::<gatehouse::model::AuditEntry>()
        .expect("audit")
        .into_iter()
        .map(|(_, e)| e.action)
        .collect();
    for action in [
        "plan.forced_logout",
        "plan.release",
        "plan.power",
        "plan.delete_vm",
    ] {
        assert!(audit.iter().any(|a| a == action), "{action}: {audit:?}");
    }
}

#[tokio::test]
async fn a_reconnect_cancels_the_chain_and_idle_timers_follow_the_reports() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    seed(&store, 1);
    let broker = broker(&store, Some(&slapd));
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 21, 9, 0, 0)
        .single()
        .expect("time");
    let clock = Clock::at(t0);
    clock.install(&broker);
    let recorder = Recorder::default();
    let address: IpAddr = "192.0.2.10".parse().expect("ip");
    let facts = ClientFacts::from_address(address);
    let alice = broker
        .sign_in("user00001", GENERATED_PASSWORD, None, &facts)
        .await
        .expect("signed in");
    let offer = broker.offer(&alice).await.expect("offer");
    let (d, _) = broker
        .connect(&alice, &offer.desktops[0].id, address)
        .await
        .expect("connected");
    broker
        .report_event(
            &d.id,
            DesktopEvent::Disconnect,
            Reporter::Client(alice.user.clone()),
        )
        .await
        .expect("disconnect");
    assert_eq!(pending(&store, &d.id).len(), 1);

    // Back within the hour: the forced logout is cancelled, and two hours on nothing runs.
    clock.set(t0 + Duration::minutes(30));
    broker
        .connect(&alice, &d.id, address)
        .await
        .expect("reconnected");
    assert!(pending(&store, &d.id).is_empty());
    clock.set(t0 + Duration::hours(3));
    assert_eq!(broker.run_plan_timers(&recorder).await.expect("run").ran, 0);
    let still: Desktop = store.get(&d.id).expect("get").expect("desktop");
    assert_eq!(still.assigned_user, Some(alice.user.key()));
    assert!(
        actions(&store, &d.id).contains(&"event.connect:ok".to_string()),
        "the cancellation is in the history"
    );

    // Idle for 15 minutes already: the 20-minute rule is due in 5; an unlock cancels it.
    let idle = DesktopEvent::Idle { seconds: 900 };
    let now = t0 + Duration::hours(3);
    broker
        .report_event(&d.id, idle, Reporter::Agent(Some("user00001".into())))
        .await
        .expect("idle");
    assert_eq!(
        pending(&store, &d.id),
        [(
            TimerAction::Power(PowerAction::PowerOff),
            now + Duration::minutes(5)
        )]
    );
    broker
        .report_event(&d.id, DesktopEvent::Unlock, Reporter::Agent(None))
        .await
        .expect("unlock");
    assert!(pending(&store, &d.id).is_empty());
    // Idle, then input again without a lock in between: "active" cancels the same way.
    broker
        .report_event(&d.id, idle, Reporter::Agent(Some("user00001".into())))
        .await
        .expect("idle");
    assert_eq!(pending(&store, &d.id).len(), 1);
    broker
        .report_event(&d.id, DesktopEvent::Active, Reporter::Agent(None))
        .await
        .expect("active");
    assert!(pending(&store, &d.id).is_empty());
    // Idle again, and this time nobody comes back.
    broker
        .report_event(&d.id, idle, Reporter::Agent(None))
        .await
        .expect("idle");
    clock.set(now + Duration::minutes(4));
    assert_eq!(broker.run_plan_timers(&recorder).await.expect("run").ran, 0);
    clock.set(now + Duration::minutes(6));
    assert_eq!(broker.run_plan_timers(&recorder).await.expect("run").ran, 1);
    assert_eq!(
        recorder.seen(),
        [("lab-000".to_string(), DesktopAction::PowerOff)]
    );
    // A client may only report for the desktop it holds.
    let stranger = gatehouse::broker::UserKey {
        server_id: "slapd".into(),
        username: "mallory".into(),
    };
    assert!(matches!(
        broker
            .report_event(&d.id, DesktopEvent::Disconnect, Reporter::Client(stranger))
            .await,
        Err(gatehouse::broker::BrokerError::NotYours)
    ));
}

/// Signs the first generated user in and connects them to a desktop of the Lab.
async fn alice_connected(
    broker: &Broker,
    address: IpAddr,
) -> (gatehouse::broker::Decision, Desktop) {
    let alice = broker
        .sign_in(
            "user00001",
            GENERATED_PASSWORD,
            None,
            &ClientFacts::from_address(address),
        )
        .await
        .expect("signed in");
    let offer = broker.offer(&alice).await.expect("offer");
    let (d, _) = broker
        .connect(&alice, &offer.desktops[0].id, address)
        .await
        .expect("connected");
    (alice, d)
}

fn at_nine() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0)
        .single()
        .expect("time")
}

/// One directory user, one Lab desktop with the chain's plans, a broker on the test's clock
/// (09:00), and that user connected to the desktop from `ADDRESS`.
struct OneDesktop {
    _slapd: Slapd,
    _dir: tempfile::TempDir,
    store: Store,
    broker: Arc<Broker>,
    clock: Clock,
    t0: DateTime<Utc>,
    alice: gatehouse::broker::Decision,
    desktop: Desktop,
}

const ADDRESS: &str = "192.0.2.10";

async fn one_desktop() -> OneDesktop {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    seed(&store, 1);
    let broker = broker(&store, Some(&slapd));
    let t0 = at_nine();
    let clock = Clock::at(t0);
    clock.install(&broker);
    let (alice, desktop) = alice_connected(&broker, ADDRESS.parse().expect("ip")).await;
    OneDesktop {
        _slapd: slapd,
        _dir: dir,
        store,
        broker,
        clock,
        t0,
        alice,
        desktop,
    }
}

#[tokio::test]
async fn a_forced_logout_without_an_agent_keeps_the_desktop_and_other_users_reports_do_nothing() {
    let OneDesktop {
        store,
        broker,
        clock,
        t0,
        alice,
        desktop: d,
        ..
    } = one_desktop().await;
    let recorder = Recorder::default();
    let address: IpAddr = ADDRESS.parse().expect("ip");
    broker
        .report_event(
            &d.id,
            DesktopEvent::Disconnect,
            Reporter::Client(alice.user.clone()),
        )
        .await
        .expect("disconnect");

    // No agent on the desktop: nothing can log the user out. The run says so, and the
    // desktop stays with its user (it is not given to anyone while they may be logged in).
    clock.set(t0 + Duration::minutes(61));
    let run = broker.run_plan_timers(&recorder).await.expect("run");
    assert_eq!((run.ran, run.failed.len()), (1, 1), "{}", run.summary());
    assert!(
        run.summary().contains("no agent token is issued"),
        "{}",
        run.summary()
    );
    let still: Desktop = store.get(&d.id).expect("get").expect("desktop");
    assert_eq!(still.assigned_user, Some(alice.user.key()));
    assert!(logout_request(&store, &d.id).expect("read").is_some());
    assert!(pending(&store, &d.id).is_empty(), "no release was set");

    // An administrator logs in to the desktop and out again: the agent reports it, and that
    // is written down and does nothing (no release, the request stays).
    for event in [DesktopEvent::Login, DesktopEvent::Logout] {
        let outcome = broker
            .report_event(
                &d.id,
                event,
                Reporter::Agent(Some("EXAMPLE\\Administrator".into())),
            )
            .await
            .expect("reported");
        assert_eq!((outcome.set.len(), outcome.sessions_ended), (0, 0));
    }
    assert!(pending(&store, &d.id).is_empty());
    assert!(logout_request(&store, &d.id).expect("read").is_some());
    let history = desktop_history(&store, &d.id, 10).expect("history");
    assert!(
        history[0].detail.contains("does not hold the desktop"),
        "{history:?}"
    );

    // The user comes back: the logout is no longer wanted.
    broker
        .connect(&alice, &d.id, address)
        .await
        .expect("reconnected");
    assert!(logout_request(&store, &d.id).expect("read").is_none());
    let shown: DesktopUse = store.get(&d.id).expect("get").expect("use");
    assert_eq!(shown.state, UseState::Connected);
}

/// A center that is slow to act: while it is asked, the user comes back to the desktop.
struct UserBackWhileWaiting {
    broker: std::sync::OnceLock<Arc<Broker>>,
    user: std::sync::OnceLock<(gatehouse::broker::Decision, IpAddr)>,
    asked: Mutex<Vec<DesktopAction>>,
}

impl DesktopControl for UserBackWhileWaiting {
    fn act<'a>(&'a self, desktop: &'a Desktop, action: DesktopAction) -> ControlFuture<'a> {
        self.asked.lock().expect("lock").push(action);
        Box::pin(async move {
            let broker = self.broker.get().expect("broker");
            let (alice, address) = self.user.get().expect("user");
            broker
                .connect(alice, &desktop.id, *address)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_user_back_while_the_run_waits_on_a_center_keeps_the_desktop() {
    let OneDesktop {
        store,
        broker,
        clock,
        t0,
        alice,
        desktop: d,
        ..
    } = one_desktop().await;
    let address: IpAddr = ADDRESS.parse().expect("ip");
    // Suspend 10 minutes after a disconnect, release after 20.
    let mut power: PowerPlan = store.get("chain").expect("get").expect("power plan");
    power.on_disconnect = PowerRule {
        after_minutes: 10,
        action: PowerAction::Suspend,
    };
    store.put("chain", &power).expect("power plan");
    let mut release: ReleasePlan = store.get("chain").expect("get").expect("release plan");
    release.logout_after_disconnect_minutes = None;
    release.release_after_disconnect_minutes = Some(20);
    store.put("chain", &release).expect("release plan");
    broker
        .report_event(
            &d.id,
            DesktopEvent::Disconnect,
            Reporter::Client(alice.user.clone()),
        )
        .await
        .expect("disconnect");
    assert_eq!(pending(&store, &d.id).len(), 2);

    // Both are due in one run: the suspend goes to the center first, and while the center
    // works the user connects again, which cancels the release.
    let control = UserBackWhileWaiting {
        broker: std::sync::OnceLock::new(),
        user: std::sync::OnceLock::new(),
        asked: Mutex::new(Vec::new()),
    };
    let _ = control.broker.set(broker.clone());
    let _ = control.user.set((alice.clone(), address));
    clock.set(t0 + Duration::minutes(25));
    let run = broker.run_plan_timers(&control).await.expect("run");
    assert_eq!((run.ran, run.failed.len()), (2, 0), "{}", run.summary());
    assert_eq!(
        *control.asked.lock().expect("lock"),
        [DesktopAction::Suspend]
    );
    let still: Desktop = store.get(&d.id).expect("get").expect("desktop");
    assert_eq!(
        still.assigned_user,
        Some(alice.user.key()),
        "the release that was cancelled meanwhile did nothing"
    );
    let history = desktop_history(&store, &d.id, 10).expect("history");
    assert!(
        history
            .iter()
            .any(|h| h.action == "timer.release" && h.detail.contains("cancelled meanwhile")),
        "{history:?}"
    );
}

/// A center that refuses every action.
struct Refusing;

impl DesktopControl for Refusing {
    fn act<'a>(&'a self, _: &'a Desktop, _: DesktopAction) -> ControlFuture<'a> {
        Box::pin(async { Err("the cloud answered 503".to_string()) })
    }
}

#[tokio::test]
async fn a_refused_power_action_is_tried_again_then_given_up() {
    let OneDesktop {
        store,
        broker,
        clock,
        t0,
        desktop: d,
        ..
    } = one_desktop().await;
    // Idle for 20 minutes already: the power-off is due at once.
    broker
        .report_event(
            &d.id,
            DesktopEvent::Idle { seconds: 1200 },
            Reporter::Agent(None),
        )
        .await
        .expect("idle");
    let mut now = t0;
    for (try_no, wait) in [(1, Some(5)), (2, Some(10)), (3, None)] {
        let run = broker.run_plan_timers(&Refusing).await.expect("run");
        assert_eq!((run.ran, run.failed.len()), (1, 1), "{}", run.summary());
        let said = &run.failed[0];
        assert!(said.contains("the cloud answered 503"), "{said}");
        let history = desktop_history(&store, &d.id, 1).expect("history");
        assert!(
            history[0].detail.contains(&format!("try {try_no} of 3")),
            "{history:?}"
        );
        match wait {
            Some(minutes) => {
                let again = now + Duration::minutes(minutes);
                assert_eq!(
                    pending(&store, &d.id),
                    [(TimerAction::Power(PowerAction::PowerOff), again)]
                );
                // Not before its time.
                assert_eq!(broker.run_plan_timers(&Refusing).await.expect("run").ran, 0);
                now = again;
                clock.set(now);
            }
            None => {
                assert!(history[0].detail.contains("given up"), "{history:?}");
                assert!(pending(&store, &d.id).is_empty());
            }
        }
    }
}
