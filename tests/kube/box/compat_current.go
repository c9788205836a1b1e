//go:build !k8s131

package main

// kubelet's device manager and Topology Manager as Kubernetes 1.32 and later call them (with
// contexts and loggers); compat_k8s131.go is the same for 1.31.

import (
	"context"

	cadvisorapi "github.com/google/cadvisor/info/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
	_ "unsafe" // go:linkname
)

// newManagerImpl is the device manager's constructor that takes its socket's path (the
// exported one fixes it at /var/lib/kubelet/device-plugins/kubelet.sock).
//
//go:linkname newManagerImpl k8s.io/kubernetes/pkg/kubelet/cm/devicemanager.newManagerImpl
func newManagerImpl(logger klog.Logger, socketPath string, topology []cadvisorapi.Node, store topologymanager.Store) (*devicemanager.ManagerImpl, error)

type managers struct {
	dm     *devicemanager.ManagerImpl
	tm     topologymanager.Manager
	logger klog.Logger
}

func newManagers(logger klog.Logger, socket string, topology []cadvisorapi.Node, policy, scope string) (*managers, error) {
	tm, err := topologymanager.NewManager(logger, topology, policy, scope, nil)
	if err != nil {
		return nil, err
	}
	dm, err := newManagerImpl(logger, socket, topology, tm)
	if err != nil {
		return nil, err
	}
	tm.AddHintProvider(logger, dm)
	return &managers{dm: dm, tm: tm, logger: logger}, nil
}

func (m *managers) start(active func() []*v1.Pod, sources config.SourcesReady, initial containermap.ContainerMap, running sets.Set[string]) error {
	return m.dm.Start(m.logger, active, sources, initial, running)
}

func (m *managers) stop() { _ = m.dm.Stop(m.logger) }

func (m *managers) admit(ctx context.Context, pod *v1.Pod, others []*v1.Pod) lifecycle.PodAdmitResult {
	return m.tm.Admit(ctx, &lifecycle.PodAdmitAttributes{Pod: pod, OtherPods: others, Operation: lifecycle.AddOperation})
}

func (m *managers) runOptions(ctx context.Context, pod *v1.Pod, c *v1.Container) (*devicemanager.DeviceRunContainerOptions, error) {
	return m.dm.GetDeviceRunContainerOptions(ctx, pod, c)
}

func (m *managers) addContainer(pod *v1.Pod, c *v1.Container, id string) {
	m.tm.AddContainer(m.logger, pod, c, id)
}

func (m *managers) updateAllocated() { m.dm.UpdateAllocatedDevices(m.logger) }

func (m *managers) capacity() (v1.ResourceList, v1.ResourceList, []string) {
	return m.dm.GetCapacity(m.logger)
}

func (m *managers) devices(uid, name string) devicemanager.ResourceDeviceInstances {
	return m.dm.GetDevices(uid, name)
}

// podResources is kubelet's own pod-resources v1 server over the node's pods and the device
// manager (CPU, memory and DRA managers are not played: none assigned).
func (m *managers) podResources(ctx context.Context, pods podSource) podresourcesv1.PodResourcesListerServer {
	return podresources.NewV1PodResourcesServer(ctx, podresources.PodResourcesProviders{
		Pods: podsProvider{pods}, Devices: devicesProvider{m}, Cpus: noCPUs{}, Memory: noMemory{}, DynamicResources: noDRA{},
	})
}

type podsProvider struct{ p podSource }

func (p podsProvider) GetActivePods() []*v1.Pod { return p.p.activePods() }
func (p podsProvider) GetPods() []*v1.Pod       { return p.p.allPods() }
func (p podsProvider) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	return p.p.podByName(namespace, name)
}

type devicesProvider struct{ m *managers }

func (d devicesProvider) UpdateAllocatedDevices(klog.Logger) { d.m.updateAllocated() }
func (d devicesProvider) GetDevices(podUID, containerName string) []*podresourcesv1.ContainerDevices {
	return containerDevices(d.m.dm.GetDevices(podUID, containerName))
}
func (d devicesProvider) GetAllocatableDevices(logger klog.Logger) []*podresourcesv1.ContainerDevices {
	return containerDevices(d.m.dm.GetAllocatableDevices(logger))
}

type noCPUs struct{}

func (noCPUs) GetCPUs(*v1.Pod, *v1.Container) []int64 { return nil }
func (noCPUs) GetPodCPUs(string) []int64              { return nil }
func (noCPUs) GetAllocatableCPUs() []int64            { return nil }

type noMemory struct{}

func (noMemory) GetMemory(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.ContainerMemory {
	return nil
}
func (noMemory) GetPodMemory(klog.Logger, string) []*podresourcesv1.ContainerMemory { return nil }
func (noMemory) GetAllocatableMemory(klog.Logger) []*podresourcesv1.ContainerMemory {
	return nil
}

type noDRA struct{}

func (noDRA) GetDynamicResources(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.DynamicResource {
	return nil
}
