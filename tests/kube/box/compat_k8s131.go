//go:build k8s131

package main

// kubelet's device manager and Topology Manager as Kubernetes 1.31 calls them (no contexts
// or loggers yet); compat_current.go is the same for 1.32 and later. Built with
// `-tags k8s131 -modfile go.k8s131.mod` (tests/kube/build.py --release 1.31).

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

// newManagerImpl: as in compat_current.go, the constructor that takes the socket's path.
//
//go:linkname newManagerImpl k8s.io/kubernetes/pkg/kubelet/cm/devicemanager.newManagerImpl
func newManagerImpl(socketPath string, topology []cadvisorapi.Node, store topologymanager.Store) (*devicemanager.ManagerImpl, error)

type managers struct {
	dm *devicemanager.ManagerImpl
	tm topologymanager.Manager
}

func newManagers(_ klog.Logger, socket string, topology []cadvisorapi.Node, policy, scope string) (*managers, error) {
	tm, err := topologymanager.NewManager(topology, policy, scope, nil)
	if err != nil {
		return nil, err
	}
	dm, err := newManagerImpl(socket, topology, tm)
	if err != nil {
		return nil, err
	}
	tm.AddHintProvider(dm)
	return &managers{dm: dm, tm: tm}, nil
}

func (m *managers) start(active func() []*v1.Pod, sources config.SourcesReady, initial containermap.ContainerMap, running sets.Set[string]) error {
	return m.dm.Start(active, sources, initial, running)
}

func (m *managers) stop() { _ = m.dm.Stop() }

func (m *managers) admit(_ context.Context, pod *v1.Pod, others []*v1.Pod) lifecycle.PodAdmitResult {
	return m.tm.Admit(&lifecycle.PodAdmitAttributes{Pod: pod, OtherPods: others})
}

func (m *managers) runOptions(_ context.Context, pod *v1.Pod, c *v1.Container) (*devicemanager.DeviceRunContainerOptions, error) {
	return m.dm.GetDeviceRunContainerOptions(pod, c)
}

func (m *managers) addContainer(pod *v1.Pod, c *v1.Container, id string) {
	m.tm.AddContainer(pod, c, id)
}

func (m *managers) updateAllocated() { m.dm.UpdateAllocatedDevices() }

func (m *managers) capacity() (v1.ResourceList, v1.ResourceList, []string) {
	return m.dm.GetCapacity()
}

func (m *managers) devices(uid, name string) devicemanager.ResourceDeviceInstances {
	return m.dm.GetDevices(uid, name)
}

func (m *managers) podResources(_ context.Context, pods podSource) podresourcesv1.PodResourcesListerServer {
	return podresources.NewV1PodResourcesServer(podresources.PodResourcesProviders{
		Pods: podsProvider{pods}, Devices: devicesProvider{m}, Cpus: noCPUs{}, Memory: noMemory{}, DynamicResources: noDRA{},
	})
}

type podsProvider struct{ p podSource }

func (p podsProvider) GetPods() []*v1.Pod { return p.p.allPods() }
func (p podsProvider) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	return p.p.podByName(namespace, name)
}

type devicesProvider struct{ m *managers }

func (d devicesProvider) UpdateAllocatedDevices() { d.m.updateAllocated() }
func (d devicesProvider) GetDevices(podUID, containerName string) []*podresourcesv1.ContainerDevices {
	return containerDevices(d.m.dm.GetDevices(podUID, containerName))
}
func (d devicesProvider) GetAllocatableDevices() []*podresourcesv1.ContainerDevices {
	return containerDevices(d.m.dm.GetAllocatableDevices())
}

type noCPUs struct{}

func (noCPUs) GetCPUs(string, string) []int64 { return nil }
func (noCPUs) GetAllocatableCPUs() []int64    { return nil }

type noMemory struct{}

func (noMemory) GetMemory(string, string) []*podresourcesv1.ContainerMemory { return nil }
func (noMemory) GetAllocatableMemory() []*podresourcesv1.ContainerMemory    { return nil }

type noDRA struct{}

func (noDRA) GetDynamicResources(*v1.Pod, *v1.Container) []*podresourcesv1.DynamicResource {
	return nil
}
