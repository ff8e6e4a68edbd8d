#!/usr/bin/perl -w
###############################################################################
# VCL::Module::Provisioning::vclvirt - vcld provisioning module that hands
# loads, captures, power and status actions to vclvirt's HTTP API.
#
# Install: see contrib/vcl/README.md in the vclvirt repository.
###############################################################################

=head1 NAME

VCL::Module::Provisioning::vclvirt - provision KVM virtual machines through vclvirt

=head1 DESCRIPTION

A drop-in replacement for VCL::Module::Provisioning::libvirt. vcld calls the same
methods; each one builds vclvirt's reservation from $self->data, sends it to
vclvirt's HTTP API and waits (with a deadline) for the outcome, following the
operation's status record by long-polling GET /v1/reservations/{id}/wait.

While a load runs, the steps vclvirt completes are written to vcld's load log
(startload, transfervm, vmsetupconfig, startvm) so VCL's dashboard shows progress.
A failure returns false and logs vclvirt's error code, message and hint.

Configuration: /etc/vcl/vclvirt.conf (owned by the user vcld runs as, mode 0600):

  api_url   = https://vclvirt.example.org:8443
  api_token = <the API's VCLVIRT_API_TOKEN>

Optional: load_timeout (3600 s), capture_timeout (7200), operation_timeout (900),
image_query_timeout (300), poll_seconds (30, at most 60), verify_tls (1), ca_file.

Core Perl modules only, from Perl 5.16 (HTTP::Tiny 0.017) on: HTTP::Tiny, JSON::PP, Time::HiRes, List::Util
(https needs IO::Socket::SSL and Net::SSLeay, which vcld itself already uses).

=cut

package VCL::Module::Provisioning::vclvirt;

use strict;
use warnings;
use 5.008000;

use base qw(VCL::Module::Provisioning);

use HTTP::Tiny;
use JSON::PP;
use List::Util qw(max min);
use Time::HiRes qw(sleep time);

use VCL::utils;

our $VERSION = '1.0.0';

# Where the API URL and token live; VCLVIRT_VCL_CONFIG points elsewhere (tests).
our $CONFIG_FILE = '/etc/vcl/vclvirt.conf';

my %DEFAULTS = (
	load_timeout        => 3600,
	capture_timeout     => 7200,
	operation_timeout   => 900,
	image_query_timeout => 300,
	poll_seconds        => 30,
	verify_tls          => 1,
);
my %REQUIRED = map { $_ => 1 } qw(api_url api_token);
my %NUMERIC  = map { $_ => 1 } qw(load_timeout capture_timeout operation_timeout image_query_timeout poll_seconds verify_tls);

# The load-log entry (computerloadstate.loadstatename) written when a load step completes.
my %LOADSTATE_OF_STEP = (
	pre_define => 'transfervm',
	define     => 'vmsetupconfig',
	power_on   => 'startvm',
);

# Request states vclvirt knows; vcld calls power/status actions in others (inuse, ...).
my %VCLVIRT_STATES = map { $_ => 1 } qw(new reload reinstall image checkpoint);

my $JSON = JSON::PP->new->utf8->canonical;

###############################################################################
# Object set-up

sub initialize {
	my $self = shift;
	my $path = $ENV{VCLVIRT_VCL_CONFIG} || $CONFIG_FILE;
	my $config = _read_config($path) or return;
	if ($config->{api_url} =~ /^https:/i) {
		my ($ok, $why) = _can_ssl($config);
		if (!$ok) {
			notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path: api_url is https but TLS is not available: $why (install IO::Socket::SSL and Net::SSLeay)");
			return;
		}
	}
	my %tls = $config->{ca_file} ? (SSL_options => {SSL_ca_file => $config->{ca_file}}) : ();
	$self->{vclvirt} = $config;
	$self->{vclvirt_http} = HTTP::Tiny->new(
		agent      => "vcld-vclvirt/$VERSION",
		timeout    => $config->{poll_seconds} + 30,
		verify_SSL => $config->{verify_tls} ? 1 : 0,
		%tls,
	);
	return 1;
}

# HTTP::Tiny has can_ssl since 0.055 and verify_SSL/SSL_options since 0.025; Perl 5.16
# (CentOS/RHEL 7, where released VCL 2.5.1 runs) ships 0.017, which checks the certificate's
# host name itself and leaves the rest to IO::Socket::SSL's defaults: there, the certificate
# check (verify_tls, ca_file) is set as this vcld process's IO::Socket::SSL defaults.
sub _can_ssl {
	my $config = shift;
	return HTTP::Tiny->can_ssl() if HTTP::Tiny->can('can_ssl');
	if (!eval { require IO::Socket::SSL; require Net::SSLeay; 1 }) {
		(my $why = $@) =~ s/\s+$//;
		return (0, "HTTP::Tiny $HTTP::Tiny::VERSION needs IO::Socket::SSL and Net::SSLeay: $why");
	}
	if (!eval { HTTP::Tiny->VERSION('0.025'); 1 }) {
		IO::Socket::SSL::set_ctx_defaults(
			SSL_verify_mode => $config->{verify_tls} ? 0x01 : 0x00,    # SSL_VERIFY_PEER / NONE
			$config->{ca_file} ? (SSL_ca_file => $config->{ca_file}) : (),
		);
	}
	return 1;
}

# key = value lines; the file holds the API token, so only its owner may read it.
sub _read_config {
	my $path = shift;
	my @stat = stat($path);
	if (!@stat) {
		notify($ERRORS{'CRITICAL'}, 0, "vclvirt: cannot read the configuration file $path: $!; create it with api_url and api_token (contrib/vcl/README.md)");
		return;
	}
	if ($stat[2] & 077) {
		notify($ERRORS{'CRITICAL'}, 0, sprintf("vclvirt: %s holds the API token but its mode is %04o: run 'chmod 600 %s'", $path, $stat[2] & 07777, $path));
		return;
	}
	if ($stat[4] != $>) {
		notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path must be owned by the user vcld runs as (uid $>), not uid $stat[4]");
		return;
	}
	my $handle;
	if (!open($handle, '<', $path)) {
		notify($ERRORS{'CRITICAL'}, 0, "vclvirt: cannot open $path: $!");
		return;
	}
	my %config = %DEFAULTS;
	my $line_number = 0;
	while (my $line = <$handle>) {
		$line_number++;
		next if $line =~ /^\s*(#|$)/;
		my ($key, $value) = $line =~ /^\s*([a-z_]+)\s*=\s*(.*?)\s*$/;
		if (!defined($key) || !(exists($DEFAULTS{$key}) || $REQUIRED{$key} || $key eq 'ca_file')) {
			notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path line $line_number: expected 'key = value' with a known key (api_url, api_token, load_timeout, capture_timeout, operation_timeout, image_query_timeout, poll_seconds, verify_tls, ca_file)");
			close($handle);
			return;
		}
		if ($NUMERIC{$key} && $value !~ /^\d+$/) {
			notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path line $line_number: $key must be a whole number, not '$value'");
			close($handle);
			return;
		}
		$config{$key} = $value;
	}
	close($handle);
	for my $key (sort keys %REQUIRED) {
		if (!defined($config{$key}) || $config{$key} eq '') {
			notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path: $key is not set");
			return;
		}
	}
	if ($config{api_url} !~ m{^https?://[^/\s]+(/[^\s]*)?$}i) {
		notify($ERRORS{'CRITICAL'}, 0, "vclvirt: $path: api_url must be http(s)://host[:port], not '$config{api_url}'");
		return;
	}
	$config{api_url} =~ s{/+$}{};
	$config{poll_seconds} = min(max($config{poll_seconds}, 1), 60);
	return \%config;
}

###############################################################################
# What vcld calls

sub load {
	my $self = shift;
	# vcld calls load() only once it has decided the computer must be reloaded (its
	# node_status said so, or the request or computer state forces it), so vclvirt must
	# not skip the load on its own node_status: state 'reinstall' always reloads.
	my $reservation = $self->_reservation('reinstall') or return;
	my $reservation_id = $reservation->{reservation_id};
	my $computer_id = $reservation->{computer}{id};
	my $what = "$reservation->{image}{name} on $reservation->{computer}{hostname} (host $reservation->{host}, reservation $reservation_id)";
	insertloadlog($reservation_id, $computer_id, 'startload', "vclvirt: loading $what");

	my %seen;
	my $progress = sub {
		my $record = shift;
		for my $step (@{$record->{steps} || []}) {
			my ($name, $state) = ($step->{name}, $step->{state} || '');
			next if $seen{$name} || ($state ne 'succeeded' && $state ne 'skipped');
			$seen{$name} = $state;
			my $took = defined($step->{duration_s}) ? sprintf(' in %.1f s', $step->{duration_s}) : '';
			notify($ERRORS{'OK'}, 0, "vclvirt: $name $state$took ($what)");
			if ($state eq 'succeeded' && $LOADSTATE_OF_STEP{$name}) {
				insertloadlog($reservation_id, $computer_id, $LOADSTATE_OF_STEP{$name}, "vclvirt: $name done on $reservation->{host}$took");
			}
		}
	};
	my ($record, $error) = $self->_run('load', '/v1/loads', $reservation, 'load_timeout', $progress);
	if (!$record) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: failed to load $what: $error");
		return;
	}

	# As the libvirt module does, the guest OS module finishes the load.
	my $os = $self->os(0);
	if ($os && $os->can('post_load')) {
		if (!$os->post_load()) {
			notify($ERRORS{'WARNING'}, 0, "vclvirt: loaded $what, but the OS module's post_load failed");
			return;
		}
	}
	notify($ERRORS{'OK'}, 0, "vclvirt: loaded $what");
	return 1;
}

sub capture {
	my $self = shift;
	my $reservation = $self->_reservation() or return;
	my $old_name = $reservation->{image}{name};
	my $what = "$reservation->{computer}{hostname} (host $reservation->{host}, reservation $reservation->{reservation_id})";

	my $os = $self->os(0);
	if ($os && $os->can('pre_capture') && !$os->pre_capture({end_state => 'on'})) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: not capturing $what: the OS module's pre_capture failed");
		return;
	}
	my %seen;
	my $progress = sub {
		for my $step (@{$_[0]->{steps} || []}) {
			next if $seen{$step->{name}} || ($step->{state} || '') ne 'succeeded';
			$seen{$step->{name}} = 1;
			notify($ERRORS{'OK'}, 0, "vclvirt: $step->{name} succeeded ($what)");
		}
	};
	my ($record, $error) = $self->_run('capture', '/v1/captures', $reservation, 'capture_timeout', $progress);
	if (!$record) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: failed to capture $what: $error");
		return;
	}
	my $outcome = $record->{outcome} || {};
	my $new_name = $outcome->{new_image};
	if (!$new_name) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: the capture of $what succeeded but named no new image");
		return;
	}
	# Never rename: image.pm writes the name it held before capture() back to image.name, and
	# loads use imagerevision.imagename, so the capture must carry VCL's own name.
	if ($new_name ne $old_name) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: captured $what as $new_name, but VCL names this revision $old_name and loads it by that name (the module renames nothing: image.pm writes its own name back); vclvirt keeps a name that ends in -v<revision>: name the revision so and capture again");
		return;
	}
	my $image_id = $self->_get('image_id');
	my $type = $self->_get('imagetype_name', 0) || '';
	if ($type ne 'qcow2' && !update_image_type($image_id, 'qcow2')) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: captured $new_name but could not set the type of image $image_id to qcow2");
		return;
	}
	notify($ERRORS{'OK'}, 0, "vclvirt: captured $what as $new_name ($outcome->{size_mb} MB)");
	return 1;
}

sub node_status {
	my $self = shift;
	my $result = $self->_operation('node_status') or return;
	notify($ERRORS{'OK'}, 0, "vclvirt: node_status $result->{status}: " . ($result->{reason} || ''));
	return $result->{status};
}

sub power_status {
	my $self = shift;
	my $result = $self->_operation('power_status') or return;
	my $power = $result->{power};
	return if !defined($power) || $power eq 'undefined';    # no domain: as libvirt, undef
	return $power;
}

sub power_on    { return shift->_operation('power_on')    ? 1 : undef }
sub power_off   { return shift->_operation('power_off')   ? 1 : undef }
sub power_reset { return shift->_operation('power_reset') ? 1 : undef }
sub unload      { return shift->_operation('unload')      ? 1 : undef }

sub post_maintenance_action {
	my $self = shift;
	$self->_operation('post_maintenance_action') or return;
	my $computer_id = $self->_get('computer_id');
	if (!update_computer_imagename($computer_id, 'noimage')) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: failed to set the current image of computer $computer_id to 'noimage'");
	}
	if (!switch_vmhost_id($computer_id, 'NULL')) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: failed to unassign computer $computer_id from its VM host");
		return;
	}
	return 1;
}

sub does_image_exist {
	my $self = shift;
	my $info = $self->_image_info(shift) or return;
	return $info->{exists} ? 1 : 0;
}

sub get_image_size_bytes {
	my $self = shift;
	my $info = $self->_image_info(shift) or return;
	if (!$info->{exists}) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: no size for $info->{image}: it is neither a master on $info->{host} nor in its repository");
		return;
	}
	return $info->{size_bytes};
}

sub get_image_size {
	my $self = shift;
	my $info = $self->_image_info(shift) or return;
	if (!$info->{exists}) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: no size for $info->{image}: it is neither a master on $info->{host} nor in its repository");
		return;
	}
	return $info->{size_mb};
}

# Images come from vclvirt's repository, never from partner management nodes.
# vcld calls it when does_image_exist was false, or undef because vclvirt could not be asked.
sub retrieve_image {
	my $self = shift;
	my $image_name = shift || $self->_get('image_name');
	my $host = $self->_get('vmhost_short_name', 0) || '?';
	if (my $error = $self->{vclvirt_unasked}{$image_name}) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: not loading $image_name: vclvirt could not say whether it is on VM host $host or in its repository ($error)");
		return 0;
	}
	notify($ERRORS{'WARNING'}, 0, "vclvirt: $image_name is not on VM host $host nor in its repository; vclvirt does not copy images from other management nodes: put it in the repository");
	return 0;
}

###############################################################################
# vclvirt's reservation, from vcld's data (contrib/vcl/README.md has the table)

sub _reservation {
	my ($self, $forced_state) = @_;
	my $state = $forced_state || $self->_get('request_state_name', 0) || '';
	# The argument of this one getter means "no warning": most VMs have no private IP in VCL.
	my $private_ip = $self->_get('computer_private_ip_address', 1);
	my $reservation = {
		reservation_id => _number($self->_get('reservation_id')),
		request_id     => _number($self->_get('request_id')),
		state          => $VCLVIRT_STATES{$state} ? $state : 'new',
		host           => $self->_get('vmhost_short_name', 0),
		computer       => {
			id         => _number($self->_get('computer_id')),
			hostname   => $self->_get('computer_hostname'),
			eth0_mac   => $self->_mac_address('eth0'),
			eth1_mac   => $self->_mac_address('eth1'),
			private_ip => (defined($private_ip) && $private_ip =~ /^\d{1,3}(\.\d{1,3}){3}$/) ? $private_ip : undef,
		},
		image => {
			id          => _number($self->_get('image_id')),
			name        => $self->_get('image_name'),    # imagerevision.imagename: the file name
			revision    => _number($self->_get('imagerevision_revision')),
			revision_id => _number($self->_get('imagerevision_id')),
			pretty_name => $self->_get('image_prettyname'),
			os_type     => $self->_get('image_os_type'),
			os_name     => $self->_get('image_os_name'),
			min_ram_mb  => _number($self->_get('image_minram')),    # larger of image and OS minram
			vcpus       => max(1, _number($self->_get('image_minprocnumber', 0)) || 0),
			project     => $self->_get('image_project', 0) || 'vcl',
		},
	};
	if (!defined($reservation->{reservation_id}) || !defined($reservation->{host})) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: the reservation has no id or no VM host; is the computer assigned to a VM host?");
		return;
	}
	return $reservation;
}

# vcld's DataStructure getters return an empty list, not undef, for a missing or NULL value:
# in list context (a hash constructor, an argument list) that shifts every later value.
# Every getter here is called through this, in scalar context.
sub _get {
	my ($self, $name, @args) = @_;
	my $getter = "get_$name";
	my $value = $self->data->$getter(@args);
	return $value;
}

# A random MAC (QEMU's 52:54 prefix) when the VM profile says the NIC's MAC is generated or
# the computer has none (NULL), the same for the life of this object and set in the data as
# libvirt does; else the computer's MAC from the database.
sub _mac_address {
	my ($self, $nic) = @_;
	return $self->{vclvirt_mac}{$nic} if $self->{vclvirt_mac}{$nic};
	my $mac = $self->_get("computer_${nic}_mac_address", 0);
	my $generated = $self->_get("vmhost_profile_${nic}generated", 0);
	return $mac if !$generated && defined($mac) && $mac ne '';
	$mac = join(':', '52', '54', map { sprintf('%02x', int(rand(256))) } 1 .. 4);
	if (!$generated) {
		notify($ERRORS{'OK'}, 0, "vclvirt: computer " . $self->_get('computer_hostname') . " has no $nic MAC address in VCL's database; its $nic gets the generated $mac");
	}
	$self->{vclvirt_mac}{$nic} = $mac;
	my $setter = "set_computer_${nic}_mac_address";
	$self->data->$setter($mac);
	return $mac;
}

sub _number {
	my $value = shift;
	return (defined($value) && $value =~ /^\d+$/) ? 0 + $value : undef;
}

###############################################################################
# Talking to vclvirt

# Submit, then follow the status record until it is final or the deadline passes.
# Returns the final record of a successful operation, or (undef, why it failed).
sub _run {
	my ($self, $what, $path, $body, $timeout_key, $on_change) = @_;
	my $reservation = $body->{reservation} || $body;
	my $reservation_id = $reservation->{reservation_id};
	my $deadline = time() + $self->{vclvirt}{$timeout_key};
	my $answer = $self->_request('POST', $path, $body, $deadline);
	if ($answer->{status} == 409) {
		notify($ERRORS{'OK'}, 0, "vclvirt: reservation $reservation_id is still running an earlier operation ($answer->{error}); waiting for it to end before the $what");
		my ($earlier, $error) = $self->_follow($reservation_id, $deadline);
		return (undef, "an earlier operation of reservation $reservation_id is still running: $error") if !$earlier;
		$answer = $self->_request('POST', $path, $body, $deadline);
	}
	if ($answer->{status} != 202) {
		return (undef, "vclvirt did not accept the $what: $answer->{error}");
	}
	my ($record, $error) = $self->_follow($reservation_id, $deadline, $on_change);
	return (undef, $error) if !$record;
	return ($record) if $record->{state} eq 'succeeded';
	my $failure = $record->{error} || {};
	my $text = sprintf('%s %s at step %s: [%s] %s', $what, $record->{state}, $record->{failed_step} || '?', $failure->{code} || '?', $failure->{message} || 'no message');
	$text .= ". $failure->{hint}" if $failure->{hint};
	return (undef, $text);
}

# Long-poll the record: one request per change, none in between.
sub _follow {
	my ($self, $reservation_id, $deadline, $on_change) = @_;
	my ($etag, $record) = ('', undef);
	while (1) {
		my $left = $deadline - time();
		if ($left <= 0) {
			my $state = $record ? "$record->{state}" . ($record->{current_step} ? ", step $record->{current_step}" : '') : 'unknown';
			return (undef, "did not finish within the deadline (state $state); it goes on in vclvirt: 'vclvirt status $reservation_id' shows it");
		}
		my $wait = min($self->{vclvirt}{poll_seconds}, max(1, int($left)));
		my $query = "timeout=$wait" . ($etag ne '' ? "&after=$etag" : '');
		my $answer = $self->_request('GET', "/v1/reservations/$reservation_id/wait?$query", undef, $deadline);
		if ($answer->{status} != 200 || ref($answer->{data}) ne 'HASH') {
			return (undef, "cannot follow reservation $reservation_id: $answer->{error}");
		}
		$etag = $answer->{data}{etag};
		$record = $answer->{data}{record};
		$on_change->($record) if $on_change && $answer->{data}{changed};
		# vclvirt says when the operation has ended (its state machine, not a list here).
		return ($record) if $answer->{data}{finished};
	}
}

sub _operation {
	my ($self, $operation, $params) = @_;
	my $reservation = $self->_reservation() or return;
	my ($record, $error) = $self->_run($operation, "/v1/operations/$operation", {reservation => $reservation, params => $params || {}}, 'operation_timeout');
	if (!$record) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: $operation of $reservation->{computer}{hostname} (host $reservation->{host}) failed: $error");
		return;
	}
	my ($step) = grep { $_->{name} eq $operation } @{$record->{steps} || []};
	return ($step && $step->{result}) || {};
}

sub _image_info {
	my ($self, $image_name) = @_;
	$image_name ||= $self->_get('image_name');
	my $host = $self->_get('vmhost_short_name');
	my $deadline = time() + $self->{vclvirt}{image_query_timeout};
	my $answer = $self->_request('GET', '/v1/hosts/' . _escape($host) . '/images/' . _escape($image_name), undef, $deadline);
	if ($answer->{status} != 200) {
		notify($ERRORS{'WARNING'}, 0, "vclvirt: cannot query image $image_name on $host: $answer->{error}");
		$self->{vclvirt_unasked}{$image_name} = $answer->{error};
		return;
	}
	delete $self->{vclvirt_unasked}{$image_name};
	return $answer->{data};
}

# One HTTP request; connection failures and 502/503/504 are tried again until the deadline.
# Returns {status, data, error}; error is vclvirt's "[CODE] message. hint" for a 4xx/5xx.
sub _request {
	my ($self, $method, $path, $body, $deadline) = @_;
	my $url = $self->{vclvirt}{api_url} . $path;
	my %options = (headers => {Authorization => "Bearer $self->{vclvirt}{api_token}", Accept => 'application/json'});
	if (defined($body)) {
		$options{content} = $JSON->encode($body);
		$options{headers}{'Content-Type'} = 'application/json';
	}
	my $pause = 1;
	while (1) {
		my $response = $self->{vclvirt_http}->request($method, $url, \%options);
		my $status = $response->{status};
		if ($status == 599 || $status == 502 || $status == 503 || $status == 504) {
			my $why = $status == 599 ? ($response->{content} || 'connection failed') : "HTTP $status";
			$why =~ s/\s+$//;
			if (time() + $pause >= $deadline) {
				return {status => $status, error => "cannot reach vclvirt's API at $self->{vclvirt}{api_url}: $why"};
			}
			notify($ERRORS{'DEBUG'}, 0, "vclvirt: API at $self->{vclvirt}{api_url} did not answer ($why); trying again in $pause s");
			sleep($pause);
			$pause = min($pause * 2, 15);
			next;
		}
		my $data;
		$data = eval { $JSON->decode($response->{content}) } if length($response->{content} || '');
		my $answer = {status => $status, data => $data};
		$answer->{error} = _error_text($data, $status) if $status >= 300;
		return $answer;
	}
}

sub _error_text {
	my ($data, $status) = @_;
	my $error = ref($data) eq 'HASH' ? ($data->{error} || $data->{detail}) : undef;
	return "HTTP $status" if ref($error) ne 'HASH';
	my $text = sprintf('[%s] %s', $error->{code} || "HTTP $status", $error->{message} || '');
	$text .= ". $error->{hint}" if $error->{hint};
	return $text;
}

sub _escape {
	my $text = shift;
	$text = '' if !defined($text);
	$text =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord($1))/ge;
	return $text;
}

1;
