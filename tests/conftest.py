import faulthandler
import signal

faulthandler.enable()

# A shell without job control starts its background commands with SIGINT
# ignored (`bash -c "pytest &"`, some CI runners), and an ignored signal stays
# ignored across exec: every child interpreter of the Ctrl-C tests would then
# never see the SIGINT they send it. A handler, unlike SIG_IGN, is reset to
# the default at exec, so the children start as a program run from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
