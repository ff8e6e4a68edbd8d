#!/usr/bin/perl
# TEST-ONLY guest OS module for the images vcld loads through vclvirt in the test bed
# (tests/e2e/test_vcl_vcld.py). VCL's Linux module reaches a guest by its VCL host name on
# port 22 (nmap, ssh); the test bed's guests are user-mode VMs whose port 22 is forwarded to
# 127.0.0.1:<guest_ssh_ports low + computer id % range> (scripts/testbed), which VCL's code
# cannot be told. So this module is VCL's base OS module (VCL::Module::OS, unchanged) with only
# the calls that need the guest replaced:
#   - is_ssh_responding: the guest's SSH banner on its forwarded port;
#   - post_load: the banner must answer (a guest that did not boot fails the load), and
#     VCLVIRT_TEST_POST_LOAD=fail makes it fail (an OS post_load that fails);
#   - set_post_load_status, reserve, post_reservation, pre_capture, post_capture,
#     pre_reload: nothing to do in the test guest.
# Each call is written to vcld.log as "test guest OS: <call>".
package VCL::Module::OS::VclvirtTestGuest;

use strict;
use warnings;

use base qw(VCL::Module::OS);

use IO::Socket::INET;
use VCL::utils;

sub _port {
	my $self = shift;
	my $base = $ENV{VCLVIRT_TESTBED_GUEST_PORT_BASE} || 22000;
	return $base + $self->data->get_computer_id() % 500;    # node-a's range (scripts/testbed)
}

sub is_ssh_responding {
	my $self = shift;
	my $port = $self->_port();
	my $socket = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 3);
	my $banner = $socket ? (<$socket> || '') : '';
	my $answers = $banner =~ /^SSH-/ ? 1 : 0;
	notify($ERRORS{'OK'}, 0, "test guest OS: is_ssh_responding $answers (127.0.0.1:$port)");
	return $answers;
}

sub post_load {
	my $self = shift;
	if (($ENV{VCLVIRT_TEST_POST_LOAD} || '') eq 'fail') {
		notify($ERRORS{'WARNING'}, 0, "test guest OS: post_load failed (VCLVIRT_TEST_POST_LOAD=fail)");
		return 0;
	}
	my $answers = $self->is_ssh_responding();
	notify($ERRORS{'OK'}, 0, "test guest OS: post_load " . ($answers ? 'done' : 'failed: no SSH'));
	return $answers;
}

for my $call (qw(set_post_load_status reserve post_reservation pre_capture post_capture pre_reload)) {
	no strict 'refs';
	*{$call} = sub {
		notify($ERRORS{'OK'}, 0, "test guest OS: $call");
		return 1;
	};
}

1;
