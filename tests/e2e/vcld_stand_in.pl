#!/usr/bin/perl
# TEST-ONLY stand-in for the parts of Apache VCL's vcld that
# VCL::Module::Provisioning::vclvirt (contrib/vcl) uses, for the tests of
# tests/e2e/test_vcl_module.py that need what VCL's own code does not show (each call
# with its sub-second time); the module inside the real vcld: test_vcl_vcld.py. This
# file gives the module exactly the framework it calls and nothing else:
#   - VCL::utils: %ERRORS, notify, insertloadlog, and the four database updates
#     the module makes (update_image_name, update_image_type,
#     update_computer_imagename, switch_vmhost_id), which here only record the call;
#   - VCL::Module / VCL::Module::Provisioning: new({data_structure, os}) calling
#     initialize, data, os;
#   - VCL::DataStructure: the get_/set_ accessors of the reference table
#     (those the module calls), with get_image_minram as the
#     larger of image and OS minram, as VCL's own;
#   - an OS object whose post_load / pre_capture record that they were called.
# Everything else (the HTTP API, the worker, the hypervisor) is real.
#
# Usage: perl -I contrib/vcl tests/e2e/vcld_stand_in.pl CASE.json
#   CASE: {"data": {accessor name without get_: value}, "calls": [[method, args...]]}
#   stdout: one JSON event per line (notify, loadlog, db, os, set, new, result, config);
#   stderr: the same, readable.
use strict;
use warnings;

use JSON::PP;
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->canonical->allow_nonref;
$| = 1;

sub event {
	my %event = (@_, t => time());
	print STDOUT $JSON->encode(\%event), "\n";
	my $detail = join(' ', map { "$_=" . (defined($event{$_}) ? (ref($event{$_}) ? $JSON->encode($event{$_}) : $event{$_}) : 'undef') } grep { $_ ne 'kind' && $_ ne 't' } sort keys %event);
	print STDERR sprintf("%-8s %s\n", $event{kind}, $detail);
}

package VCL::utils;
use base qw(Exporter);
our (@EXPORT, %ERRORS);
BEGIN {    # `use VCL::utils` (here and in the module) must find it without a file
	@EXPORT = qw(%ERRORS notify insertloadlog update_image_name update_image_type update_computer_imagename switch_vmhost_id);
	%ERRORS = (OK => 0, WARNING => 1, CRITICAL => 2, UNKNOWN => 3, MAILMASTERS => 5, DEBUG => 6);
	$INC{'VCL/utils.pm'} = __FILE__;
}
my %LEVEL_NAME = reverse %ERRORS;

sub notify {
	my ($level, $log, $message) = @_;
	main::event(kind => 'notify', level => $LEVEL_NAME{$level}, message => $message);
	return 1;
}

sub insertloadlog {
	my ($reservation_id, $computer_id, $loadstatename, $info) = @_;
	main::event(kind => 'loadlog', reservation => $reservation_id, computer => $computer_id, name => $loadstatename, info => $info);
	return 1;
}

sub update_image_name         { main::event(kind => 'db', call => 'update_image_name',         args => [@_]); return 1 }
sub update_image_type         { main::event(kind => 'db', call => 'update_image_type',         args => [@_]); return 1 }
sub update_computer_imagename { main::event(kind => 'db', call => 'update_computer_imagename', args => [@_]); return 1 }
sub switch_vmhost_id          { main::event(kind => 'db', call => 'switch_vmhost_id',          args => [@_]); return 1 }

package VCL::DataStructure;
use List::Util qw(max);
our $AUTOLOAD;

sub new { my ($class, $fields) = @_; return bless {%$fields}, $class }

sub get_image_minram {
	my $self = shift;
	return max($self->{image_minram} || 0, $self->{image_os_minram} || 0);
}

sub AUTOLOAD {
	my ($self, @args) = @_;
	(my $name = $AUTOLOAD) =~ s/.*:://;
	return if $name eq 'DESTROY';
	if ($name =~ /^get_(\w+)$/) {
		my $key = $1;
		if (!defined($self->{$key}) && !(@args && defined($args[0]) && !$args[0])) {
			VCL::utils::notify($VCL::utils::ERRORS{'WARNING'}, 0, "data structure: $key is not set");
		}
		return $self->{$key};
	}
	if ($name =~ /^set_(\w+)$/) {
		$self->{$1} = $args[0];
		main::event(kind => 'set', key => $1, value => $args[0]);
		return 1;
	}
	die "VCL::DataStructure has no method $name\n";
}

package VCL::Module;
use VCL::utils;
BEGIN { $INC{'VCL/Module.pm'} = __FILE__ }

sub new {
	my ($class, $args) = @_;
	my $self = bless {data => $args->{data_structure}, os => $args->{os}}, $class;
	return if $self->can('initialize') && !$self->initialize($args);
	return $self;
}

sub data { return $_[0]{data} }

sub os {
	my ($self, $warn) = @_;
	notify($ERRORS{'WARNING'}, 0, 'no OS object') if !$self->{os} && (!defined($warn) || $warn);
	return $self->{os};
}

package VCL::Module::Provisioning;
use base qw(VCL::Module);
BEGIN { $INC{'VCL/Module/Provisioning.pm'} = __FILE__ }

package StandIn::OS;
sub new         { return bless {}, shift }
sub post_load   { main::event(kind => 'os', call => 'post_load');   return 1 }
sub pre_capture { main::event(kind => 'os', call => 'pre_capture', args => $_[1]); return 1 }

package main;

my $case_file = shift or die "usage: $0 CASE.json\n";
open(my $handle, '<', $case_file) or die "$case_file: $!\n";
my $case = $JSON->decode(do { local $/; <$handle> });
close($handle);

require VCL::Module::Provisioning::vclvirt;
my $module = VCL::Module::Provisioning::vclvirt->new({
	data_structure => VCL::DataStructure->new($case->{data}),
	os             => StandIn::OS->new,
});
event(kind => 'new', ok => ($module ? 1 : 0));
exit(0) if !$module;

for my $call (@{$case->{calls}}) {
	my ($method, @args) = @$call;
	if ($method eq 'config') {    # what the module read from its configuration file
		my %config = %{$module->{vclvirt}};
		delete $config{api_token};
		event(kind => 'config', value => \%config);
		next;
	}
	my $value = $module->$method(@args);    # scalar context, as vcld calls them
	event(kind => 'result', call => $method, value => $value);
}
